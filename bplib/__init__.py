"""bplib: the library behind the executable re-run of Goldblum et al., "Truth or
Backpropaganda? An Empirical Investigation of Deep Learning Theory" (ICLR 2020).

Its layers (core, measures, claims, book) and the rule of which may import which are in
CONTRIBUTING.md, "The layers of bplib"; ``lint-imports`` checks the rule.
"""

from pathlib import Path

__version__ = "0.1.0"
# The checkout (chapters/, data/records/, runs/, _toc.yml) and its default data and records
# folders. Here, in the one module every other imports, so that the book tools have them
# without importing torch (as bplib.data and bplib.results do).
REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = REPO_ROOT / "data" / "records"  # the records committed with the book
OFFLINE_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar"  # the offline CIFAR npz files
