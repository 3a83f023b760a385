"""Compare the text outputs (streams, Markdown tables, plain text) of two executed notebooks.

Used to show that a restructure changes no number a chapter shows: execute the chapter at the
same profile before and after (papermill), then
``python scripts/compare_outputs.py before.ipynb after.ipynb``; exit status 1 on a difference.
"""

from __future__ import annotations

import sys

import nbformat


def texts(path: str) -> list[str]:
    out = []
    for cell in nbformat.read(path, as_version=4).cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if o.output_type == "stream":
                out.append(o.text)
            elif "data" in o:
                out.append(o["data"].get("text/markdown") or o["data"].get("text/plain", ""))
    return out


def main(before: str, after: str) -> int:
    a, b = texts(before), texts(after)
    diffs = [(x, y) for x, y in zip(a, b) if x != y]
    for x, y in diffs:
        print(f"--- before\n{x}\n+++ after\n{y}")
    print(f"{len(a)} / {len(b)} outputs; {len(diffs)} differ")
    return int(bool(diffs) or len(a) != len(b))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
