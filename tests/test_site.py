"""The website in a real headless browser (Debian's chromium): every page of the built book is
served on 127.0.0.1 and opened; no page shows execution errors, every image loads, math is
typeset, the Colab launch links point to the paired .ipynb files; a screenshot of each page is
kept in ``_build/screenshots/``.

The site is built like ``make book PROFILE=smoke`` (every chapter executed at the smoke profile,
into ``_build/smoke`` so ``make book`` and this test share the execution cache), or at
``$BPLIB_SITE_PROFILE`` (``cpu``: the published site, read from the committed records), or taken
from ``$BPLIB_SITE_DIR`` (a build folder or its ``html`` folder; e.g. after ``make book``:
``BPLIB_SITE_DIR=_build/cpu``). Without chromium the test is skipped, unless
``$BPLIB_REQUIRE_BROWSER`` is set (``.ci/run`` sets it after installing chromium).

How the checks run in the browser: the test's HTTP server appends one ``<script>`` to each page.
After the page's ``load`` event and MathJax's start-up typesetting, it loads every ``<img>``
source again as a fresh ``Image`` (so lazy or hidden images count too), and writes
``{"images": [{src, width}], "mjx": n, "merror": n}`` into ``<body data-bplib-check>``;
chromium's ``--dump-dom`` returns the DOM after ``--virtual-time-budget`` ms of page time.
"""

import contextlib
import functools
import json
import os
import re
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

from bplib.claims import CLAIMS, claim

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "_build" / "screenshots"
CHROMIUM = Path(os.environ.get("BPLIB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1400,900",  # a laptop's first screen: the verdict must be on it
    "--virtual-time-budget=5000",  # ms of page time: load, images, MathJax typesetting
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHECK_SCRIPT = b"""<script>/* injected by tests/test_site.py */
window.addEventListener("load", async () => {
  const report = {};
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise.catch((e) => { report.mathjax_error = String(e); });
  }
  const probe = (src) => new Promise((resolve) => {
    const im = new Image();
    im.onload = () => resolve(im.naturalWidth);
    im.onerror = () => resolve(0);
    im.src = src;
  });
  const imgs = [...document.images];
  const widths = await Promise.all(imgs.map((i) => probe(i.currentSrc || i.src)));
  report.images = imgs.map((i, k) => ({src: i.getAttribute("src"), width: widths[k]}));
  report.mjx = document.querySelectorAll("mjx-container").length;
  // Findings first: where the verdict box / status block starts, measured from the top of the
  // article at this window size, and how many visible code inputs come before it.
  const article = document.querySelector("article") || document.body;
  const top0 = article.getBoundingClientRect().top;
  const where = (sel) => {
    const el = document.querySelector(sel);
    if (!el) return null;
    const before = [...document.querySelectorAll(".cell_input")].filter((c) =>
      (c.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) &&
      c.getClientRects().length > 0);
    return {top: el.getBoundingClientRect().top - top0, code_before: before.length};
  };
  report.verdict = where(".verdict");
  report.status = where(".status-block");
  report.merror = document.querySelectorAll("mjx-merror").length;
  document.body.setAttribute("data-bplib-check", JSON.stringify(report));
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
    if os.environ.get("BPLIB_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def html_dir(chromium, site_html):
    return site_html


class _Handler(SimpleHTTPRequestHandler):
    """Serves the site; HTML pages get CHECK_SCRIPT before ``</body>``."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.is_file():
            return super().do_GET()
        body = path.read_bytes().replace(b"</body>", CHECK_SCRIPT + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output readable
        pass


@contextlib.contextmanager
def serving(html_dir: Path):
    """Base URL of ``html_dir`` served on 127.0.0.1 (a free port) from a thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=html_dir))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def pages(html_dir: Path) -> list[str]:
    """Every HTML page of the site, relative to ``html_dir`` (not the theme's static files)."""
    skip = ("_static", "_sources", "_images")
    found = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html"))
    return [p for p in found if not p.startswith(skip)]


def open_page(chromium: Path, url: str, screenshot: Path, profile_dir: Path) -> BeautifulSoup:
    """The DOM of ``url`` after page load and scripts; saves a screenshot on the way."""
    cmd = [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}",
           f"--screenshot={screenshot}", "--dump-dom", url]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium failed on {url}:\n{proc.stderr[-3000:]}"
    return BeautifulSoup(proc.stdout, "html.parser")


def page_problems(page: str, static: BeautifulSoup, dom: BeautifulSoup, colab: str) -> list[str]:
    """What is wrong with one page (empty when it is fine)."""
    problems = []
    raw = dom.body.get("data-bplib-check") if dom.body else None
    if raw is None:
        return [f"{page}: the check script did not finish (page load or MathJax stalled)"]
    report = json.loads(raw)
    if "mathjax_error" in report:
        problems.append(f"{page}: MathJax failed: {report['mathjax_error']}")
    # 1. execution errors
    for node in dom.select(".traceback, .output.error, .cell_output .error"):
        problems.append(f"{page}: error output: {node.get_text()[:200]!r}")
    for node in dom.select(".cell_output"):
        if "Traceback (most recent call last)" in node.get_text():
            problems.append(f"{page}: traceback in an output: {node.get_text()[:200]!r}")
    # 2. images
    for image in report["images"]:
        if image["width"] <= 0:
            problems.append(f"{page}: image does not load: {image['src']}")
    # 3. math: every math element of the page source is typeset, without TeX errors
    n_math = len(static.select(".math"))
    if n_math and report["mjx"] < n_math:
        problems.append(f"{page}: {n_math} math elements but {report['mjx']} typeset")
    if report["merror"]:
        problems.append(f"{page}: {report['merror']} TeX errors (mjx-merror)")
    # 4. Colab launch links open a paired notebook of the repository
    links = [a["href"] for a in dom.select("a[href]") if a["href"].startswith(colab)]
    if page.startswith("chapters/") and not links:
        problems.append(f"{page}: no Colab launch link")
    for href in links:
        path = href.split("/blob/", 1)[-1].split("/", 1)[-1]  # after /blob/<branch>/
        if not href.endswith(".ipynb") or not (REPO / path).is_file():
            problems.append(f"{page}: Colab link {href} is not a paired .ipynb of the repo")
    return problems


FIRST_SCREEN = 900  # px of the article that a 1400 x 900 window shows first
CHAPTERS = {f"chapters/{claim(c).CHAPTER}.html" for c in CLAIMS}  # every claim's chapter page


def layout_problems(page: str, report: dict) -> list[str]:
    """Findings first: a chapter's ``.verdict`` box and the front page's ``.status-block`` start
    on the first screen of the article, with no visible code input before them."""
    wanted = {**{p: ".verdict" for p in CHAPTERS}, "intro.html": ".status-block"}
    if page not in wanted:
        return []
    found = report.get("verdict" if wanted[page] == ".verdict" else "status")
    if found is None:
        return [f"{page}: no {wanted[page]} element"]
    problems = []
    if found["top"] > FIRST_SCREEN:
        problems.append(f"{page}: {wanted[page]} starts {found['top']:.0f} px into the article "
                        f"(more than {FIRST_SCREEN})")  # fmt: skip
    if found["code_before"]:
        problems.append(f"{page}: {found['code_before']} visible code input(s) before "
                        f"{wanted[page]}")  # fmt: skip
    return problems


# What a reader should never see in a page's text (outside math, code inputs and literal code):
# the symptoms of a rendering or output defect.
DEFECTS = {
    "raw $ (math that did not render)": re.compile(r"\$[^$\n]*\$|\$"),  # a pair counts once
    # its |---| line, once per table (the typographer may have made "---" an em dash)
    "raw pipe table": re.compile(r"\|\s*:?(?:-{3,}|—+):?\s*\|"),
    # Python's "nan" ("nan ± nan" counts once); "NaN" in prose is a word, not an output
    "nan": re.compile(r"\bnan\b(?:\s*±\s*nan\b)?"),
    "a path of the build machine": re.compile(r"(?<![\w.~])/(?:work|tmp|home|root|Users)/"),
    # 8 or more significant digits: a number printed unformatted (0.0007161 is formatted)
    "a bare float": re.compile(r"(?<![\w.])-?(?:0\.0*[1-9]\d{7,}|[1-9]\d*\.\d{7,})"),
}


def text_defects(page: str, static: BeautifulSoup) -> list[str]:
    """Each :data:`DEFECTS` found in the text of ``static`` (a page's HTML as built), with its
    context. Cell outputs count (a printed path, an unformatted number); code inputs, math and
    literal code in the prose do not (a ``$VAR`` or a table in a code block is fine)."""
    soup = BeautifulSoup(str(static.select_one("article") or static.body or static), "html.parser")
    for node in soup.select("script, style, .cell_input, .math, mjx-container"):
        node.decompose()
    for node in soup.select("pre, code"):
        if not node.find_parent(class_="cell_output") and node.parent is not None:
            node.decompose()
    text = soup.get_text("\n")
    problems = []
    for what, pattern in DEFECTS.items():
        for m in pattern.finditer(text):
            context = text[max(0, m.start() - 40) : m.end() + 40].replace("\n", " ")
            problems.append(f"{page}: {what}: {context!r}")
    return problems


def check_site(chromium: Path, html_dir: Path, screenshots: Path, profile_dir: Path) -> list[str]:
    """Open every page of ``html_dir`` in chromium; the problems found on all pages."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    colab = config["launch_buttons"]["colab_url"].rstrip("/") + "/"
    screenshots.mkdir(parents=True, exist_ok=True)
    problems = []
    with serving(html_dir) as url:
        for page in pages(html_dir):
            shot = screenshots / (page.replace("/", "__").removesuffix(".html") + ".png")
            shot.unlink(missing_ok=True)
            dom = open_page(chromium, f"{url}/{page}", shot, profile_dir)
            static = BeautifulSoup((html_dir / page).read_text(), "html.parser")
            problems += page_problems(page, static, dom, colab)
            problems += text_defects(page, static)
            raw = dom.body.get("data-bplib-check") if dom.body else None
            problems += layout_problems(page, json.loads(raw)) if raw else []
            if not (shot.is_file() and shot.read_bytes()[:8] == PNG_MAGIC):
                problems.append(f"{page}: no screenshot at {shot}")
    return problems


def test_every_page_in_headless_chromium(chromium, html_dir, tmp_path):
    assert "intro.html" in pages(html_dir), f"no intro.html in {html_dir}"
    problems = check_site(chromium, html_dir, SCREENSHOTS, tmp_path / "chromium")
    assert not problems, "\n".join(problems)


BROKEN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<img src="../_images/ok.png"> <img src="../_images/missing.png">
<div class="cell_output"><pre>Traceback (most recent call last):\n  ZeroDivisionError</pre></div>
<p><span class="math notranslate nohighlight">\\(x^2\\)</span> (no MathJax on this page)</p>
<a href="https://colab.research.google.com/github/o/r/blob/main/chapters/broken.md">Colab</a>
</body></html>"""


def test_synthetic_broken_page_is_caught(chromium, tmp_path):
    """The checks are not vacuous: a synthetic page with each defect fails each check once."""
    from PIL import Image

    (tmp_path / "site" / "chapters").mkdir(parents=True)
    (tmp_path / "site" / "_images").mkdir()
    Image.new("RGB", (4, 3), "red").save(tmp_path / "site" / "_images" / "ok.png")
    (tmp_path / "site" / "chapters" / "broken.html").write_text(BROKEN_PAGE)
    problems = check_site(chromium, tmp_path / "site", tmp_path / "shots", tmp_path / "chromium")
    expected = [
        "image does not load: ../_images/missing.png",
        "traceback in an output",
        "1 math elements but 0 typeset",
        "Colab link https://colab.research.google.com/github/o/r/blob/main/chapters/broken.md",
    ]
    assert len(problems) == len(expected), problems
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)


DEFECTIVE_PAGE = """<html><body><article>
<p>The loss is $\\ell(x)$ here.</p>
<p>| a | b |
|---|---|
| 1 | 2 |</p>
<p>| x | y | |—|—| | 1 | 2 |</p>
<div class="cell_output"><pre>mean nan ± nan</pre></div>
<div class="cell_output"><pre>data from /work/shared/data/cifar</pre></div>
<div class="cell_output"><pre>0.03735194660796293</pre></div>
</article></body></html>"""
CLEAN_PAGE = """<html><body><article>
<p>Math <span class="math notranslate nohighlight">\\(x^2 + b\\)</span>, a table:</p>
<table><tr><td>0.0061</td><td>0.0007161</td><td>94.66 ± 0.12 (n=3)</td></tr></table>
<p>Set <code class="literal">$BPLIB_DATA</code> or <code>/tmp/out.ipynb</code>; a finance word.</p>
<div class="cell tag_hide-input"><div class="cell_input"><pre>x = "$ | a | b |"</pre></div>
<div class="cell_output"><pre>profile cpu; 2 seed(s) [0, 1]; rho +0.233</pre></div></div>
</article></body></html>"""


def test_defect_scan_flags_each_defect_once_and_passes_a_clean_page():
    """The scan is not vacuous: a synthetic page with a raw $, a raw pipe table, a nan, a path of
    the build machine and a bare float gives one problem each; a clean page gives none."""
    problems = text_defects("x.html", BeautifulSoup(DEFECTIVE_PAGE, "html.parser"))
    for what in DEFECTS:
        expected = 2 if what == "raw pipe table" else 1  # as typed, and as the typographer left it
        assert sum(f": {what}: " in p for p in problems) == expected, (what, problems)
    assert text_defects("x.html", BeautifulSoup(CLEAN_PAGE, "html.parser")) == []


def test_layout_check_flags_a_late_verdict_and_code_before_it():
    page = next(iter(sorted(CHAPTERS)))
    assert layout_problems(page, {"verdict": {"top": 120, "code_before": 0}}) == []
    late = layout_problems(page, {"verdict": {"top": 2400, "code_before": 2}})
    assert len(late) == 2 and "2400 px" in late[0] and "2 visible code" in late[1]
    assert layout_problems(page, {"verdict": None}) == [f"{page}: no .verdict element"]
    assert "no .status-block" in layout_problems("intro.html", {"status": None})[0]
    assert layout_problems("references.html", {}) == []
