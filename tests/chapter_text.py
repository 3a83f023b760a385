"""Synthetic chapters the tests write: :func:`chapter` puts the Jupytext MyST header, which
makes a ``.md`` file a notebook to jupytext, papermill and the book, before the cells."""

HEADER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def chapter(cells: str) -> str:
    return HEADER + cells
