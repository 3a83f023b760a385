import json
import os

import numpy as np
import pytest
import torch

from bplib import results
from bplib.results import describe, load_or_run, record_path


def test_load_or_run_stores_provenance_and_hits_cache(records_dir):
    calls = []

    def work():
        calls.append(1)
        return {"acc": torch.tensor(91.5), "curve": np.arange(3)}

    rec = load_or_run("exp", {"width": 4}, work, profile="smoke", seed=1)
    assert rec["result"] == {"acc": 91.5, "curve": [0, 1, 2]}
    prov = rec["provenance"]
    for field in ("commit", "dirty", "torch", "bplib", "python", "device", "wall_time_s", "date"):
        assert field in prov
    assert rec["params"] == {"width": 4, "seed": 1} and rec["profile"] == "smoke"
    again = load_or_run("exp", {"width": 4}, work, profile="smoke", seed=1)
    assert again == rec and len(calls) == 1
    load_or_run("exp", {"width": 4}, work, profile="smoke", seed=2)
    assert len(calls) == 2  # another seed is another record


def test_provenance_names_the_hardware_and_keys_stay(records_dir, monkeypatch):
    """CPU records reproduce bit for bit only on the same kind of CPU (issue 27, item 6), so each
    names the CPU, torch's vector instructions and the GPU (before: only ``host_cpus``)."""
    prov = load_or_run("exp", {}, dict, profile="smoke", seed=0, device="cpu")["provenance"]
    assert isinstance(prov["cpu"], str) and prov["cpu"] not in ("", "unknown")
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and not prov["gpu"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB")
    on_gpu = load_or_run("exp", {}, dict, profile="smoke", seed=1, device="cuda:0")
    assert on_gpu["provenance"]["gpu"] == "NVIDIA H100 80GB"
    # Keys hash params and seed only, and the committed records (without these fields) still
    # read: every one sits under the key its parameters give.
    for path in sorted((results.COMMITTED / "cpu").glob("*/*.json")):
        rec = results.read_record(path)
        assert record_path(rec["experiment"], rec["params"], "cpu", results.COMMITTED) == path


def test_force_recomputes(records_dir):
    values = iter([1, 2])
    load_or_run("exp", {}, lambda: {"v": next(values)}, profile="smoke")
    rec = load_or_run("exp", {}, lambda: {"v": next(values)}, profile="smoke", force=True)
    assert rec["result"]["v"] == 2
    path = record_path("exp", {}, "smoke")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # replaced, not added


def test_failed_run_keeps_the_old_record(records_dir):
    load_or_run("exp", {}, lambda: {"v": 1}, profile="smoke")

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        load_or_run("exp", {}, boom, profile="smoke", force=True)
    path = record_path("exp", {}, "smoke")
    assert json.loads(path.read_text())["result"]["v"] == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_atomic_write_leaves_no_partial_file(records_dir, monkeypatch):
    path = records_dir / "x.json"
    results.write_atomic(path, {"a": 1})

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        results.write_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(records_dir) == ["x.json"]


def test_nan_is_stored_as_null_and_bad_types_refused():
    assert results.jsonable({"x": float("nan")}) == {"x": None}
    with pytest.raises(TypeError, match="cannot store"):
        results.jsonable({"x": object()})


def test_unknown_profile_is_a_clear_error(records_dir):
    with pytest.raises(ValueError, match="profile='fast'.*smoke"):
        load_or_run("exp", {}, dict, profile="fast")


def test_describe_names_profile_seeds_commit(records_dir):
    records = [load_or_run("exp", {}, lambda: {"v": 0}, profile="smoke", seed=s) for s in (0, 1)]
    text = describe(records)
    assert "profile smoke" in text and "2 seed(s) [0, 1]" in text and "commit" in text


def test_glue_gives_numpy_scalars_as_python_numbers(monkeypatch):
    """A NumPy scalar's repr in NumPy 2 (np.float64(9.5)) broke a format spec in the book."""
    import sys
    import types

    import numpy as np

    from bplib.stats import glue

    seen = {}
    fake = types.SimpleNamespace(glue=lambda name, value, display: seen.update({name: value}))
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    assert glue("x", np.float64(9.5)) == 9.5 and type(seen["x"]) is float
    assert type(glue("n", np.int64(3))) is int and glue("s", "text") == "text"
