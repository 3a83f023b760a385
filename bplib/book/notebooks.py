"""The Colab notebooks: a paired, output-free ``chapters/<name>.ipynb`` for each chapter source
(``chapters/<name>.md``, Jupytext MyST), opened by the book's Colab launch buttons.

As ``jupytext --to ipynb --update``, an unchanged cell keeps its id and a new one gets an id
from its source, so regenerating is deterministic and ``--check`` tells drift from noise. Each
notebook has one cell its source lacks, :func:`colab_setup`, before the first code cell that
imports ``bplib``: only Colab runs the ``.ipynb``; the book, papermill and ``bplib-run`` run the
``.md`` where ``bplib`` is installed.

    python -m bplib.book.notebooks          # write chapters/*.ipynb (or: bplib-sync-notebooks)
    python -m bplib.book.notebooks --check  # exit 1 if any .ipynb is missing, stale or orphaned
"""

import argparse
import hashlib
import itertools
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml
from jupytext.combine import combine_inputs_with_outputs

from bplib.book import DEFAULT_CHAPTERS_DIR, REPO_ROOT

# Written once here, for every chapter; the repository is _config.yml's (its launch buttons').
COLAB_SETUP = """\
import sys

if "google.colab" in sys.modules:  # fetch the book (code + committed records) and install it
    !git clone -q --depth 1 {url} /content/bp
    %pip install -q -e /content/bp
    %cd /content/bp/chapters
    sys.path.insert(0, "/content/bp")  # a running kernel reads no .pth file the install wrote"""


def colab_setup(config: Path = REPO_ROOT / "_config.yml") -> str:
    """The Colab setup cell's source, cloning ``repository.url`` of the book's ``config``."""
    return COLAB_SETUP.format(url=yaml.safe_load(config.read_text())["repository"]["url"])


def chapter_sources(chapters_dir: Path) -> list[Path]:
    """The chapter notebooks in ``chapters_dir``: ``*.md`` files whose header names a kernel."""
    paths = sorted(Path(chapters_dir).glob("*.md"))
    return [p for p in paths if "kernelspec" in jupytext.read(p).metadata]  # not plain markdown


def render(source: Path) -> str:
    """The ``.ipynb`` text paired with ``source``: its cells without outputs, keeping the ids of
    unchanged cells from the existing ``.ipynb`` (``jupytext --update``)."""
    nb = jupytext.read(source)
    imports = re.compile(r"^(from|import) bplib\b", re.M)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and imports.search(c.source)]
    if code:
        nb.cells.insert(code[0], nbformat.v4.new_code_cell(colab_setup()))
    target = source.with_suffix(".ipynb")
    old_ids = set()
    if target.exists():
        old = nbformat.read(target, as_version=4)
        old_ids = {cell.get("id") for cell in old.cells}
        nb = combine_inputs_with_outputs(nb, old, fmt="md:myst")
    nb.metadata.pop("jupytext", None)  # no pairing metadata: Colab users see a plain notebook
    taken = set()
    for cell in nb.cells:
        if cell.get("id") not in old_ids or cell["id"] in taken:
            cell["id"] = _stable_id(cell, taken)
        taken.add(cell["id"])
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def _stable_id(cell, taken: set) -> str:
    """An id from the cell's type and source; a counter separates cells with equal sources."""
    for n in itertools.count():
        cell_id = hashlib.sha256(f"{cell.cell_type}\n{cell.source}\n{n}".encode()).hexdigest()
        if cell_id[:12] not in taken:
            return cell_id[:12]


def sync(chapters_dir: Path = DEFAULT_CHAPTERS_DIR, check: bool = False) -> list[str]:
    """Write (or with ``check``, only compare) every paired notebook; return the problems:
    ``"<file>: missing" | "<file>: stale" | "<file>: no chapter source"``. Writing fixes the
    first two; an orphaned ``.ipynb`` is only reported (delete it if its chapter is gone)."""
    problems = []
    sources = chapter_sources(chapters_dir)
    for source in sources:
        target = source.with_suffix(".ipynb")
        text = render(source)
        if target.exists() and target.read_text() == text:
            continue
        problems.append(f"{target}: {'stale' if target.exists() else 'missing'}")
        if not check:
            target.write_text(text)
    stems = {s.stem for s in sources}
    for target in sorted(Path(chapters_dir).glob("*.ipynb")):
        if target.stem not in stems:
            problems.append(f"{target}: no chapter source {target.stem}.md")
    return problems


def main(argv: list[str] | None = None) -> int:
    description = "Write the output-free Colab notebooks chapters/*.ipynb from chapters/*.md."
    parser = argparse.ArgumentParser(prog="bplib-sync-notebooks", description=description)
    check = "write nothing; exit 1 if any notebook is missing, stale or orphaned"
    parser.add_argument("--check", action="store_true", help=check)
    parser.add_argument("--chapters-dir", type=Path, default=DEFAULT_CHAPTERS_DIR)
    args = parser.parse_args(argv)
    problems = sync(args.chapters_dir, check=args.check)
    for line in problems:
        path, _, what = line.partition(": ")
        written = not args.check and what in ("missing", "stale")
        print(f"wrote {path} (was {what})" if written else line, file=sys.stderr)
    if args.check and problems:
        print("run `python -m bplib.book.notebooks` and commit the notebooks", file=sys.stderr)
    orphans = [p for p in problems if "no chapter source" in p]
    return 1 if (problems if args.check else orphans) else 0


if __name__ == "__main__":
    sys.exit(main())
