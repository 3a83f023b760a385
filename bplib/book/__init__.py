"""Publishing tools: ``batch`` (``bplib-run``: chapters under papermill, one job per chapter,
profile and seed) and ``notebooks`` (``bplib-sync-notebooks``: the paired Colab notebooks).

They read chapters as notebooks and never import a claim or a measure.
"""

from bplib import REPO_ROOT

DEFAULT_CHAPTERS_DIR = REPO_ROOT / "chapters"
