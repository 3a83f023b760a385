"""The Colab notebooks: a paired, output-free ``chapters/<name>.ipynb`` for each chapter source.

The chapters are written as Jupytext MyST markdown (``chapters/<name>.md``); the book's Colab
launch buttons open the ``.ipynb`` beside each one (excluded from the Sphinx build in
``_config.yml``). Regeneration follows ``jupytext --to ipynb --update``: a cell whose source is
unchanged keeps its id and metadata, so the notebooks' diffs stay small. A new cell gets an id
derived from its source (not a random one), so regenerating is deterministic and ``--check``
can tell drift from noise.

    python -m bplib.book.notebooks          # write chapters/*.ipynb (or: bplib-sync-notebooks)
    python -m bplib.book.notebooks --check  # exit 1 if any .ipynb is missing, stale or orphaned
"""

import argparse
import hashlib
import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs

from bplib.book import DEFAULT_CHAPTERS_DIR


def chapter_sources(chapters_dir: Path) -> list[Path]:
    """The chapter notebooks in ``chapters_dir``: ``*.md`` files whose header names a kernel."""
    paths = sorted(Path(chapters_dir).glob("*.md"))
    return [p for p in paths if "kernelspec" in jupytext.read(p).metadata]  # not plain markdown


def render(source: Path) -> str:
    """The ``.ipynb`` text paired with ``source``: its cells without outputs, keeping the ids of
    unchanged cells from the existing ``.ipynb`` (``jupytext --update``)."""
    nb = jupytext.read(source)
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
    for n in range(len(taken) + 1):
        text = f"{cell.cell_type}\n{cell.source}\n{n}"
        cell_id = hashlib.sha256(text.encode()).hexdigest()[:12]
        if cell_id not in taken:
            return cell_id
    raise AssertionError("unreachable: more counters than taken ids")


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
