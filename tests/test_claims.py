"""The claims registry and the results page (bplib.claims.at_a_glance): every registered claim
has the one template, a claim defined in a test runs through the runner, the store and the page,
and the page shows exactly the records of the configuration its profile names."""

import importlib.util
import json
import shutil
import sys
import types

import pytest

from bplib import REPO_ROOT, claims, profiles, registry, runner
from bplib.profiles import get_profile
from bplib.results import record_path, write_atomic
from bplib.stats import Summary

COMMITTED = REPO_ROOT / "data" / "records"


@pytest.mark.parametrize("name", claims.CLAIMS)
def test_every_registered_claim_has_the_template(name):
    mod = claims.claim(name)
    missing = [a for a in claims.TEMPLATE if not hasattr(mod, a)]
    assert not missing, f"bplib.claims.{name} lacks {missing}"
    assert importlib.util.find_spec(f"bplib.claims.{name}.report"), f"{name} has no report.py"
    assert not hasattr(mod, "run"), "claims run through bplib.claims.run, not their own"
    assert (REPO_ROOT / "chapters" / f"{mod.CHAPTER}.md").exists()
    for profile in ("smoke", "cpu", "paper"):
        jobs = mod.jobs(get_profile(name, profile))
        assert jobs and len({j.path(profile) for j in jobs}) == len(jobs), (name, profile)
        assert {j.experiment for j in jobs} == {mod.EXPERIMENT}
        assert all(mod.cost(j) >= 0 for j in jobs)


def test_results_page_explains_every_registered_claim():
    """The page's table loops over the registry; its prose on where each verdict comes from is
    written by hand (it links the chapters' Verdict sections), so a new claim must add its line."""
    text = (REPO_ROOT / "chapters" / "results.md").read_text()
    missing = [c for c in claims.CLAIMS if f"/chapters/{claims.claim(c).CHAPTER}`" not in text]
    assert not missing, f"chapters/results.md does not explain {missing}"


def toy_claim(calls: list) -> tuple[types.ModuleType, types.ModuleType]:
    """A claim and its profiles, with the template and nothing else: a record is ``scale`` x
    (seed + 1) for each of two rows; the verdict says whether the mean exceeds the paper's 2."""
    mod = types.ModuleType("bplib.claims.toy")
    mod.EXPERIMENT, mod.TITLE, mod.CHAPTER = "toy", "5. A toy belief", "toy"
    mod.PARAMS = ("scale",)

    def jobs(cfg):
        return [runner.job(mod.EXPERIMENT, runner.params(cfg, mod.PARAMS, row=row), seed)
                for row in ("a", "b") for seed in cfg.seeds]  # fmt: skip

    def work(job, ctx):
        calls.append(job)
        return {"value": job.params["scale"] * (job.seed + 1)}

    def summarize(records, cfg):
        mean = sum(r["result"]["value"] for r in records) / len(records)
        verdict = "agrees with the paper" if mean > 2 else "does not agree"
        return Summary(f"mean {mean:g} (n={len(cfg.seeds)} seeds)", verdict, {"toy_mean": mean})

    mod.jobs, mod.work, mod.summarize = jobs, work, summarize
    mod.cost = lambda job: float(job.seed)
    mod.paper_headline = lambda: "the paper's mean: 2"
    prof = types.ModuleType("bplib.profiles.toy")
    prof.PROFILES = {p: {"scale": 1.5, "seeds": [0, 1, 2]} for p in profiles.PROFILE_NAMES}
    return mod, prof


def test_a_claim_defined_here_runs_through_runner_store_and_results_page(tmp_path, monkeypatch):
    """Registering a claim takes its name in the registry: bplib.claims.run computes its records
    into the store, a second run reads them, and the results page's row shows its numbers."""
    calls = []
    mod, prof = toy_claim(calls)
    names = (*registry.CLAIMS, "toy")
    for owner, attr in ((registry, "CLAIMS"), (claims, "CLAIMS"), (profiles, "CHAPTERS")):
        monkeypatch.setattr(owner, attr, names)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(sys.modules, prof.__name__, prof)
    cfg = get_profile("toy", "smoke")
    # jobs=1: in-process, as the toy module is no file that a worker process could import
    ctx = runner.Context("smoke", device="cpu", root=tmp_path, checkpoints=tmp_path / "ck", jobs=1)
    records = claims.run("toy", cfg, ctx)
    assert [r["result"]["value"] for r in records] == [1.5, 3.0, 4.5] * 2  # in jobs' order
    assert [j.seed for j in calls] == [2, 2, 1, 1, 0, 0]  # costliest first
    assert claims.run("toy", cfg, ctx) == records and len(calls) == 6  # read from the store
    row = claims.at_a_glance("toy", "smoke", tmp_path)
    assert row["title"] == "5. A toy belief" and row["paper"] == "the paper's mean: 2"
    assert row["ours"] == "mean 3 (n=3 seeds)" and row["verdict"] == "agrees with the paper"
    assert row["n"] == 3 and row["provenance"].startswith("profile smoke; 3 seed(s) [0, 1, 2]")
    assert claims.table_rows([row])[0][:5] == [row[k] for k in ("title", "paper", "ours",
                                                                "verdict", "n")]  # fmt: skip
    # the front page's status block and the results page's line, from the same row
    assert row["status"] == "agrees with the paper" and row["scale"] == "3 seeds"
    assert claims.status_rows([row]) == [
        ["{ref}`5. A toy belief <toy-verdict>`", "the paper's mean: 2", row["status"], "3 seeds"]
    ]
    line = claims.glance_lines([row], "https://example.org/r/")
    assert line.startswith("- **{ref}`5. A toy belief <toy-verdict>`**: paper: the paper's mean")
    assert "Ours: mean 3 (n=3 seeds). **agrees with the paper**" in line and "\n" not in line
    # the optional hook: a claim whose records decide its size gives the page's n and scale
    mod.at_scale = lambda cfg, recs: {"n": sum(r is not None for r in recs) - 4, "other": 1}
    row = claims.at_a_glance("toy", "smoke", tmp_path)
    assert row["n"] == 2 and row["scale"] == "3 seeds" and "other" not in row


def test_commits_in_a_provenance_line_are_linked():
    text = "profile cpu; 2 seed(s) [0, 1]; commit b6c5fa2c, 0123abcd+dirty; device cpu"
    assert claims.link_commits(text, "https://github.com/o/r/") == (
        "profile cpu; 2 seed(s) [0, 1]; commit [b6c5fa2c](https://github.com/o/r/commit/b6c5fa2c)"
        ", [0123abcd+dirty](https://github.com/o/r/commit/0123abcd); device cpu"
    )


def page(profile="cpu", root=None):
    return [claims.at_a_glance(c, profile, root) for c in claims.CLAIMS]


def test_page_from_committed_cpu_records():
    rows = page(root=COMMITTED)
    for r in rows:
        assert r["n"] >= 1 and r["provenance"].startswith("profile cpu;"), r
        assert r["verdict"] != claims.NO_RECORDS and "incomplete" not in r["verdict"], r
        assert r["ours"] != "—" and r["paper"], r
    assert all(len(row) == len(claims.HEADERS) for row in claims.table_rows(rows))
    # paper and ours on the same contrast (contract item 15): norm-bias minus weight decay
    wd = next(r for r in rows if r["claim"] == "weight_decay")
    assert "norm-bias" in wd["paper"] and "norm-bias, μ² < init − weight decay " in wd["ours"]
    assert all(r["status"] and r["scale"].count("seeds") == 1 for r in rows), rows


def test_page_ignores_records_of_other_configurations(tmp_path):
    """Every committed record is stored again under another configuration (one more epoch or
    another seed): no number on the page changes."""
    store = tmp_path / "records"
    shutil.copytree(COMMITTED / "cpu", store / "cpu")
    before = page(root=store)
    for path in sorted((COMMITTED / "cpu").rglob("*.json")):
        rec = json.loads(path.read_text())
        params = {k: v for k, v in rec["params"].items() if k != "seed"}
        variants = [({**params, "epochs": params.get("epochs", 1) + 1}, rec["seed"])]
        variants.append((params, rec["seed"] + 100))
        for p, seed in variants:
            other = {**rec, "params": {**p, "seed": seed}, "seed": seed}
            write_atomic(record_path(rec["experiment"], other["params"], "cpu", store), other)
    assert page(root=store) == before


def test_empty_store_says_no_records(tmp_path):
    for r in page(root=tmp_path):
        assert r["verdict"] == claims.NO_RECORDS and r["n"] == 0, r
        assert r["paper"]  # the paper's numbers are shown anyway


def test_partial_store_is_reported_not_raised(tmp_path):
    cfg = get_profile("rank", "cpu")
    job = claims.claim("rank").jobs(cfg)[0]
    src = job.path("cpu", COMMITTED)
    dst = job.path("cpu", tmp_path)
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    r = claims.at_a_glance("rank", "cpu", tmp_path)
    assert r["n"] == 1 and "incomplete" in r["verdict"] and "1 of" in r["verdict"], r
    assert runner.stored([job], "cpu", tmp_path)[0]["seed"] == job.seed


def test_unknown_claim_is_a_clear_error():
    with pytest.raises(ValueError, match="claim"):
        claims.claim("dropout")
