"""The claims of the paper, one package each, all with the same template:

- ``EXPERIMENT`` (the records' folder), ``TITLE`` (the belief tested), ``CHAPTER`` (its page);
- ``jobs(cfg) -> list[runner.Job]``: every record the profile ``cfg`` needs (the grid lives
  here; params built by ``runner.params`` from the claim's tuple of profile keys);
- ``work(job, ctx) -> dict``: computes one record (module level, for worker processes);
- ``cost(job) -> float``: relative cost, so that the slow jobs start first;
- ``summarize(records, cfg) -> stats.Summary``: rows, verdict and glue from ``jobs(cfg)``'s
  records, in that order;
- ``paper_headline() -> str``: the paper's headline numbers, from ``bplib.paper``;
- ``report.py``: its tables and figures;
- optional, ``at_scale(cfg, records) -> dict``: the results page's ``"n"`` (seeds) and
  ``"scale"`` where the claim's own records decide them (weight decay: a pilot picks the cell and
  the number of seeds), from ``jobs(cfg)``'s records (None where not stored); the keys it
  leaves out keep the generic count (distinct seeds of the stored records) and :func:`scale`.

:func:`run` runs any of them. Claims never import each other. The one list of claims is
:data:`bplib.registry.CLAIMS`: the results page, the Makefile, the dry run and ``bplib-run`` read
it; adding a claim adds one name there (see CONTRIBUTING.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import re

from bplib import paper, registry, runner
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
    never change it. ``{"claim", "title", "paper", "paper_verdict", "ours", "verdict", "status",
    "n", "provenance", "scale"}``."""
    mod = claim(name)
    cfg = get_profile(name, profile)
    jobs = mod.jobs(cfg)
    records = runner.stored(jobs, profile, root)
    found = [r for r in records if r is not None]
    out = {"claim": name, "title": mod.TITLE, "paper": mod.paper_headline()}
    out["n"] = len({r["seed"] for r in found})
    out["provenance"] = describe(found) if found else NO_RECORDS
    out["paper_verdict"] = paper.VERDICTS.get(name, out["paper"])  # a new claim: its headline
    out["scale"] = scale(cfg, found)
    if hasattr(mod, "at_scale"):  # a claim whose records decide its size (see the docstring)
        out.update({k: v for k, v in mod.at_scale(cfg, records).items() if k in ("n", "scale")})
    if not found:
        return {**out, "ours": "—", "verdict": NO_RECORDS, "status": NO_RECORDS}
    if len(found) < len(jobs):  # shown, not hidden: the chapter would compute the rest
        msg = f"records incomplete at this profile: {len(found)} of {len(jobs)} stored"
        return {**out, "ours": "—", "verdict": msg, "status": msg}
    summary = mod.summarize(records, cfg)
    # A claim's decision in a few words is its glue value "<prefix>_status"; a claim that does
    # not glue one yet shows its verdict up to the first parenthesis.
    status = next((v for k, v in summary.glue.items() if k.endswith("_status")), None)
    status = status or summary.verdict.split(" (")[0]
    return {**out, "ours": summary.ours, "verdict": summary.verdict, "status": status}


def scale(cfg, records: list[dict]) -> str:
    """How big a profile's run is, from the size keys the claims' profiles use: network widths,
    training images, seeds and test images (the records say which test set they used)."""
    c = vars(cfg)
    parts = []
    if isinstance(c.get("widths"), dict):  # per family (NTK)
        n = {len(v) for v in c["widths"].values()}
        parts.append(f"{len(c['widths'])} networks × {'/'.join(map(str, sorted(n)))} widths")
    elif c.get("widths"):
        parts.append(f"MLP widths {'-'.join(map(str, c['widths']))}")
    elif c.get("width"):
        parts.append(f"ResNet-18 width {c['width']:g}")
    for row in c.get("models", {}).values():
        parts.append(f"{row['paper_row']} width {row['model_kw'].get('width', 1):g}")
    if "n_train" in c:
        n = c["n_train"]
        parts.append(f"{n:,} training images" if n else "all training images")
    for kind, n in c.get("base_images", {}).items():  # None: the whole training set
        parts.append(f"{n:,} images ({kind} base)" if n else f"all training images ({kind} base)")
    parts.append(f"{len(c['seeds'])} seeds")
    tests = {r["result"].get("test_name") or r["result"].get("n_test") for r in records}
    tests = {f"{t:,} test images" if isinstance(t, int) else t for t in tests - {None}}
    parts += sorted(tests) or ([f"{c['n_test']:,} test images"] if c.get("n_test") else [])
    return "; ".join(parts)


def link_commits(text: str, url: str) -> str:
    """``text`` with every "commit <hash>" of a provenance line a Markdown link to that commit
    on the repository at ``url`` (a dirty commit is linked to its clean parent's hash)."""
    return re.sub(r"\b([0-9a-f]{7,40})\b(\+dirty)?",
                  lambda m: f"[{m[0]}]({url.rstrip('/')}/commit/{m[1]})", text)  # fmt: skip


STATUS_HEADERS = ["claim", "the paper", "ours", "scale of our run"]


def status_rows(rows: list[dict]) -> list[list[str]]:
    """The front page's status block: per :func:`at_a_glance` row, the claim linked to its
    chapter's verdict box (label ``<claim>-verdict``), the paper's verdict, ours, our scale."""
    return [[f"{{ref}}`{r['title']} <{r['claim']}-verdict>`", r["paper_verdict"], r["status"],
             r["scale"]] for r in rows]  # fmt: skip


def glance_lines(rows: list[dict], url: str) -> str:
    """The results page: one short Markdown line per claim with the paper's headline beside ours
    on the same contrast, our decision, and the provenance with its commits linked."""
    return "\n".join(
        f"- **{{ref}}`{r['title']} <{r['claim']}-verdict>`**: paper: {r['paper']}. Ours: "
        f"{r['ours']}. **{r['status']}** ({link_commits(r['provenance'], url)})."
        for r in rows
    )


def table_rows(rows: list[dict]) -> list[list]:
    """Rows for :data:`HEADERS` from :func:`at_a_glance` results."""
    keys = ("title", "paper", "ours", "verdict", "n", "provenance")
    return [[r[k] for k in keys] for r in rows]
