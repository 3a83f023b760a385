"""The "Results at a glance" page (bplib.summary): rows for the four claims from the committed
cpu records, "no records" from an empty store, and the weight-decay verdict rule it shares with
chapter 2."""

import math

import pytest

from bplib.profiles import get_profile
from bplib.regularizers import collect, runs_from_records, table_specs, verdict_reading
from bplib.results import find_records
from bplib.summary import CLAIMS, HEADERS, NO_RECORDS, claim_summary, summarize, table_rows


@pytest.fixture
def committed_records(monkeypatch):
    """The repository's data/records (BPLIB_RECORDS unset)."""
    monkeypatch.delenv("BPLIB_RECORDS", raising=False)


def test_summary_from_committed_cpu_records(committed_records):
    rows = summarize("cpu")
    assert [s["claim"] for s in rows] == list(CLAIMS)
    for s in rows:
        assert s["n"] >= 1, s["claim"]
        assert s["provenance"].startswith("profile cpu;"), s["provenance"]
        assert s["verdict"] != NO_RECORDS and "incomplete" not in s["verdict"], s
        assert s["ours"] != "—" and s["paper"], s
    table = table_rows(rows)
    assert len(table) == 4 and all(len(r) == len(HEADERS) for r in table)


def test_summary_empty_store_says_no_records(records_dir):
    for s in summarize("cpu"):
        assert s["verdict"] == NO_RECORDS and s["n"] == 0 and s["provenance"] == NO_RECORDS
        assert s["paper"]  # the paper's numbers are shown anyway


def test_summary_missing_rows_are_reported_not_raised(committed_records, records_dir):
    """A store holding only part of a chapter's runs (here: one rank record) gives a row that
    says so instead of crashing the page."""
    import json
    import shutil

    from bplib.data import REPO_ROOT

    src = sorted((REPO_ROOT / "data" / "records" / "cpu" / "rank").glob("*.json"))[0]
    (records_dir / "cpu" / "rank").mkdir(parents=True)
    shutil.copy(src, records_dir / "cpu" / "rank" / src.name)
    s = claim_summary("rank", "cpu")
    assert s["n"] == 1 and "incomplete" in s["verdict"], s
    assert json.loads(src.read_text())["profile"] == "cpu"


def test_summary_rejects_unknown_claim(records_dir):
    with pytest.raises(ValueError, match="claim"):
        claim_summary("dropout", "cpu")


def test_weight_decay_runs_from_records_match_the_profile(committed_records):
    cfg = get_profile("weight_decay", "cpu")
    runs = runs_from_records(cfg, find_records("weight_decay", "cpu"))
    assert len(runs) == len(table_specs(cfg))  # every committed cpu record of this config
    other = get_profile("weight_decay", "cpu", epochs=cfg.epochs + 1)
    assert runs_from_records(other, find_records("weight_decay", "cpu")) == []
    assert {key for key, _, _ in collect(runs)} == set(cfg.models)


@pytest.mark.parametrize(
    ("low", "high", "n", "reading"),
    [
        (-2.0, -0.5, 3, "weight decay better"),
        (0.5, 2.0, 3, "norm-bias better"),
        (-1.0, 1.0, 3, "no difference"),
        (math.nan, math.nan, 1, "no difference"),
    ],
)
def test_weight_decay_verdict_reading(low, high, n, reading):
    d = {"mean": (low + high) / 2, "low": low, "high": high, "n": n}
    assert verdict_reading(d).startswith(reading)


def test_summary_minima_ignores_records_of_another_configuration(records_dir):
    """A stored Table 1 record made with other settings (here: one more epoch) is not pooled
    with the profile's records: the row says so instead of mixing configurations."""
    from bplib.minima_table import row_params
    from bplib.results import write_atomic

    cfg = get_profile("minima", "cpu")
    params = {**row_params(cfg, "default"), "epochs": cfg.epochs + 1, "seed": 0}
    record = {
        "experiment": "minima_table1",
        "profile": "cpu",
        "seed": 0,
        "params": params,
        "result": {},
        "provenance": {"commit": "0" * 40, "dirty": False, "device": "cpu"},
    }
    write_atomic(records_dir / "cpu" / "minima_table1" / "stale.json", record)
    s = claim_summary("minima", "cpu")
    assert s["verdict"] == "no records of this profile's configuration" and s["n"] == 0, s
