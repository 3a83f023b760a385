"""bplib: the library behind the executable re-run of Goldblum et al., "Truth or
Backpropaganda? An Empirical Investigation of Deep Learning Theory" (ICLR 2020).

Its layers (core, measures, claims, book) and the rule of which may import which are in
CONTRIBUTING.md, "The layers of bplib"; ``lint-imports`` checks the rule.
"""

from pathlib import Path

__version__ = "0.1.0"
# The checkout (chapters/, data/records/, runs/, _toc.yml). Here, in the one module every other
# imports, so that the book tools have it without importing torch (as bplib.data does).
REPO_ROOT = Path(__file__).resolve().parent.parent
