"""Small helpers that turn records into what a chapter shows: mean +- std over seeds, paired
intervals, tables beside the paper's numbers, glued values, a provenance line."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std, n) of finite values; std is nan for n < 2."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if n > 1 else math.nan, n


def fmt_mean_std(values, digits: int = 2) -> str:
    """'93.41 +- 0.12 (n=3)'; one value is shown without a spread."""
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    if n == 1:
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={n})"


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; (mean, nan, nan) for n < 2.

    For paired comparisons pass the per-seed differences.
    """
    m, s, n = mean_std(values)
    if n < 2:
        return m, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, df=n - 1) * s / math.sqrt(n)
    return m, m - half, m + half


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats are shown with 4 significant digits, None as 'n/a'."""

    def cell(x):
        if x is None:
            return "n/a"
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def show_table(headers, rows, caption: str | None = None):
    """Display a Markdown table (with an optional caption line) in a notebook."""
    from IPython.display import Markdown, display

    text = markdown_table(headers, rows)
    display(Markdown(f"{text}\n\n{caption}" if caption else text))


def glue(name: str, value, display: bool = False):
    """``myst_nb.glue`` inside the book build; plain display elsewhere (Colab, papermill).
    A NumPy scalar is glued as the Python number it holds: its repr (``np.float64(9.5)``)
    would defeat a format spec such as ``{glue:text}`name:.1f```."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    try:
        from myst_nb import glue as nb_glue
    except ImportError:
        if display:
            print(f"{name} = {value}")
        return value
    nb_glue(name, value, display=display)
    return value


@dataclass
class Summary:
    """What a claim shows, computed from its records by ``claims.<claim>.summarize``: our
    headline (shown beside ``paper_headline()``), the verdict, and the values its chapter glues
    and the tables it shows."""

    ours: str  # ours: mean +- std or a paired interval, with n
    verdict: str  # decided from the records by the claim's rule
    glue: dict = field(default_factory=dict)  # name -> value the chapter's prose glues
    tables: dict = field(default_factory=dict)  # name -> (headers, rows) the chapter shows
