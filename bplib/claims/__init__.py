"""The claims of the paper, one module each, all with the same interface:

- ``NAME``, ``TITLE`` (the belief tested) and ``CHAPTER`` (its page);
- ``jobs(cfg) -> list[runner.Job]``: every record the profile ``cfg`` needs;
- ``work(job, ctx) -> dict``: computes one record (module level, for worker processes);
- ``run(cfg, ctx, n_procs=None, force=False) -> list[dict]``: ``runner.run`` of the above;
- ``paper_headline() -> str``: the paper's headline numbers, from ``bplib.paper``;
- ``summarize(records, cfg) -> stats.Summary``: rows, verdict and glue from ``jobs(cfg)``'s
  records, in that order.

Claims never import each other. The results page and ``bplib-run`` loop over :data:`CLAIMS`;
adding a claim adds one entry here (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib

from bplib import runner
from bplib.checks import check_choice
from bplib.profiles import get_profile
from bplib.registry import CLAIMS  # noqa: F401  (re-exported: the chapters' order)
from bplib.results import describe

NO_RECORDS = "no records at this profile"
HEADERS = ["belief tested", "paper", "ours", "verdict (ours)", "n seeds", "records"]


def claim(name: str):
    """The module of one claim, ``bplib.claims.<name>``."""
    return importlib.import_module(f"bplib.claims.{check_choice('claim', name, CLAIMS)}")


def at_a_glance(name: str, profile: str, root=None) -> dict:
    """One claim's row of the results page at ``profile``: only the records of the
    configuration that the profile names are read (by key), so other records in the store
    never change it. ``{"claim", "title", "paper", "ours", "verdict", "n", "provenance"}``."""
    mod = claim(name)
    cfg = get_profile(name, profile)
    jobs = mod.jobs(cfg)
    records = runner.stored(jobs, profile, root)
    found = [r for r in records if r is not None]
    out = {"claim": name, "title": mod.TITLE, "paper": mod.paper_headline()}
    out["n"] = len({r["seed"] for r in found})
    out["provenance"] = describe(found) if found else NO_RECORDS
    if not found:
        return {**out, "ours": "—", "verdict": NO_RECORDS}
    if len(found) < len(jobs):  # shown, not hidden: the chapter would compute the rest
        msg = f"records incomplete at this profile: {len(found)} of {len(jobs)} stored"
        return {**out, "ours": "—", "verdict": msg}
    summary = mod.summarize(records, cfg)
    return {**out, "ours": summary.ours, "verdict": summary.verdict}


def table_rows(rows: list[dict]) -> list[list]:
    """Rows for :data:`HEADERS` from :func:`at_a_glance` results."""
    keys = ("title", "paper", "ours", "verdict", "n", "provenance")
    return [[r[k] for k in keys] for r in rows]
