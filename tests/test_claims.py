"""The claims registry and the results page (bplib.claims.at_a_glance): every claim has the
same interface; the page shows exactly the records of the configuration its profile names."""

import json
import shutil

import pytest

from bplib import REPO_ROOT, claims, runner
from bplib.profiles import get_profile
from bplib.results import record_path, write_atomic

COMMITTED = REPO_ROOT / "data" / "records"
INTERFACE = ("NAME", "TITLE", "CHAPTER", "jobs", "work", "run", "paper_headline", "summarize")


@pytest.mark.parametrize("name", claims.CLAIMS)
def test_every_claim_has_the_interface(name):
    mod = claims.claim(name)
    missing = [a for a in INTERFACE if not hasattr(mod, a)]
    assert not missing, f"bplib.claims.{name} lacks {missing}"
    assert mod.NAME == name and (REPO_ROOT / "chapters" / f"{mod.CHAPTER}.md").exists()
    for profile in ("smoke", "cpu", "paper"):
        jobs = mod.jobs(get_profile(name, profile))
        assert jobs and len({j.path(profile) for j in jobs}) == len(jobs), (name, profile)


def page(profile="cpu", root=None):
    return [claims.at_a_glance(c, profile, root) for c in claims.CLAIMS]


def test_page_from_committed_cpu_records():
    rows = page(root=COMMITTED)
    for r in rows:
        assert r["n"] >= 1 and r["provenance"].startswith("profile cpu;"), r
        assert r["verdict"] != claims.NO_RECORDS and "incomplete" not in r["verdict"], r
        assert r["ours"] != "—" and r["paper"], r
    assert all(len(row) == len(claims.HEADERS) for row in claims.table_rows(rows))


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
