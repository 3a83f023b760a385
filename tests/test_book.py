"""The Jupyter Book builds warning-free (-W) and its front page presents the paper.

Marked ``book``: it runs the full ``jupyter-book build`` (and, once chapters are in _toc.yml,
executes them at their default ``smoke`` profile). Run it alone with ``pytest -m book``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAPER_TITLE = "Truth or Backpropaganda? An Empirical Investigation of Deep Learning Theory"

pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def built_html(site_html) -> Path:
    """The one site build of the session (tests/conftest.py)."""
    return site_html


def test_book_builds_and_intro_presents_the_paper(built_html: Path):
    index, intro = built_html / "index.html", built_html / "intro.html"
    assert index.is_file(), "index.html missing"
    assert intro.is_file(), "intro.html missing"
    page = intro.read_text(encoding="utf-8")
    assert PAPER_TITLE in page
    assert "1910.00359" in page  # the arXiv identifier


def test_math_uses_the_vendored_mathjax(built_html: Path):
    page = (built_html / "intro.html").read_text(encoding="utf-8")
    assert "_static/mathjax/tex-chtml-full.mjs" in page
    assert "cdn.jsdelivr.net/npm/mathjax" not in page
    fonts = built_html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert (built_html / "_static" / "mathjax" / "tex-chtml-full.mjs").is_file()
    assert any(fonts.glob("*.woff")), "MathJax fonts were not copied"


def test_bibliography_lists_the_paper(built_html: Path):
    refs = (built_html / "references.html").read_text(encoding="utf-8")
    assert "Truth or backpropaganda?" in refs  # pybtex lower-cases titles after the first word
