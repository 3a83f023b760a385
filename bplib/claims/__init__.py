"""The claims of the paper, one package each, all with the same template:

- ``EXPERIMENT`` (the records' folder), ``TITLE`` (the belief tested), ``CHAPTER`` (its page);
- ``jobs(cfg) -> list[runner.Job]``: every record the profile ``cfg`` needs (the grid lives
  here; params built by ``runner.params`` from the claim's tuple of profile keys);
- ``work(job, ctx) -> dict``: computes one record (module level, for worker processes);
- ``cost(job) -> float``: relative cost, so that the slow jobs start first;
- ``summarize(records, cfg) -> stats.Summary``: rows, verdict and glue from ``jobs(cfg)``'s
  records, in that order;
- ``paper_headline() -> str``: the paper's headline numbers, from ``bplib.paper``;
- ``report.py``: its tables and figures.

:func:`run` runs any of them. Claims never import each other. The one list of claims is
:data:`bplib.registry.CLAIMS`: the results page, the Makefile, the dry run and ``bplib-run`` read
it; adding a claim adds one name there (see CONTRIBUTING.md).
"""

from __future__ import annotations

import dataclasses
import importlib

from bplib import registry, runner
from bplib.checks import check_choice
from bplib.profiles import get_profile
from bplib.registry import CLAIMS  # noqa: F401  (re-exported: the chapters' order)
from bplib.results import describe

TEMPLATE = ("EXPERIMENT", "TITLE", "CHAPTER", "jobs", "work", "cost", "summarize",
            "paper_headline")  # fmt: skip
NO_RECORDS = "no records at this profile"
HEADERS = ["belief tested", "paper", "ours", "verdict (ours)", "n seeds", "records"]


def claim(name: str):
    """The module of one claim, ``bplib.claims.<name>``."""
    name = check_choice("claim", name, registry.CLAIMS)  # read now: a test may register one
    return importlib.import_module(f"bplib.claims.{name}")


def run(name: str, cfg, ctx: runner.Context, force: bool = False) -> list[dict]:
    """The records of claim ``name``'s ``jobs(cfg)``, in that order: stored ones are read,
    missing ones computed by its ``work`` (``force``: every one), the costliest first. A claim
    whose jobs load what other jobs wrote (rank: a fine-tuning job loads its base's weights)
    also defines ``waves(jobs)``, the jobs in groups run one after the other."""
    mod = claim(name)
    todo = [dataclasses.replace(j, cost=mod.cost(j)) for j in mod.jobs(cfg)]
    records = {}
    for wave in mod.waves(todo) if hasattr(mod, "waves") else [todo]:
        done = runner.run(wave, mod.work, ctx, force=force, desc=f"{name} jobs")
        records.update(zip(wave, done, strict=True))
    return [records[j] for j in todo]


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
