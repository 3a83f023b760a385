"""Publishing tools: ``batch`` (``bplib-run``: chapters under papermill, one notebook per
chapter and profile) and ``notebooks`` (``bplib-sync-notebooks``: the paired Colab notebooks).

They read chapters as notebooks and never import a claim or a measure. ``REPO_ROOT`` is defined
here, not taken from ``bplib.data``, so that ``notebooks`` does not import torch.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: chapters/, runs/, _toc.yml
DEFAULT_CHAPTERS_DIR = REPO_ROOT / "chapters"
