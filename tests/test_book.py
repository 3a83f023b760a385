"""The Jupyter Book builds warning-free (-W) and its front page presents the paper.

Marked ``book``: it runs the full ``jupyter-book build`` (and, once chapters are in _toc.yml,
executes them at their default ``smoke`` profile). Run it alone with ``pytest -m book``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAPER_TITLE = "Truth or Backpropaganda? An Empirical Investigation of Deep Learning Theory"
# The build must finish in minutes; a hung kernel fails the test instead of blocking CI.
BUILD_TIMEOUT_S = 900

pytestmark = pytest.mark.book


def _build(path_output: Path) -> subprocess.CompletedProcess:
    # jupyter-book has no ``python -m`` entry point; call its click CLI with this interpreter,
    # so the test uses the same environment as pytest.
    cmd = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(REPO),
        "-W",
        "-n",
        "--keep-going",
        "--builder",
        "html",
        "--path-output",
        str(path_output),
    ]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )


@pytest.fixture(scope="module")
def built_html(tmp_path_factory) -> Path:
    if importlib.util.find_spec("jupyter_book") is None:
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    out = tmp_path_factory.mktemp("book")
    run = _build(out)
    if run.returncode != 0:
        log = (run.stdout + run.stderr)[-6000:]
        pytest.fail(f"jupyter-book build -W failed (exit {run.returncode}):\n{log}")
    return out / "_build" / "html"


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
