"""Publishing tools: ``batch`` (``bplib-run``: chapters under papermill, one notebook per
chapter and profile) and ``notebooks`` (``bplib-sync-notebooks``: the paired Colab notebooks).

They read chapters as notebooks and never import a claim or a measure.
"""

from bplib import REPO_ROOT

DEFAULT_CHAPTERS_DIR = REPO_ROOT / "chapters"
