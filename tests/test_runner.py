"""The one runner and record-key rule (bplib.runner): keys hold no place or runner setting,
only missing jobs are computed, no worker process starts when nothing is missing."""

import pytest

from bplib import runner

EXPERIMENT = "runner_test"


CALLS = []  # jobs computed in this process (n_procs=1 runs in-process)


def double(job, ctx):  # module level: worker processes can run it
    CALLS.append(job.params["x"])
    return {"value": 2 * job.params["x"], "device": ctx.device}


def jobs_of(xs, seed=0):
    return [runner.job(EXPERIMENT, {"x": x}, seed) for x in xs]


@pytest.mark.parametrize("name", ["device", "data_dir", "jobs", "seed", "profile"])
def test_job_refuses_place_and_runner_settings(name):
    with pytest.raises(ValueError, match=name):
        runner.job(EXPERIMENT, {"x": 1, name: "cpu"}, 0)


def test_params_are_the_claims_profile_keys_then_the_place_in_the_grid():
    from types import SimpleNamespace

    cfg = SimpleNamespace(lr=0.1, epochs=3, seeds=[0, 1], width=8)
    p = runner.params(cfg, ("lr", "epochs"), row="default", epochs=5)
    assert p == {"lr": 0.1, "epochs": 5, "row": "default"}  # the place wins; seeds stay out
    with pytest.raises(AttributeError):
        runner.params(cfg, ("momentum",))  # a key the profile lacks is an error, not a default


def test_key_depends_on_params_and_seed_only(records_dir):
    a, b = (
        runner.job(EXPERIMENT, {"x": 1, "y": [1, 2]}, 0),
        runner.job(EXPERIMENT, {"y": (1, 2), "x": 1}, 0),
    )
    assert a.path("smoke") == b.path("smoke")  # key order and tuple/list do not matter
    assert a.path("smoke") != runner.job(EXPERIMENT, {"x": 1, "y": [1, 2]}, 1).path("smoke")
    ctx_cpu, ctx_auto = runner.Context("smoke", device="cpu"), runner.Context("smoke")
    runner.run([a], double, ctx_cpu, n_procs=1)
    assert runner.run([a], double, ctx_auto, n_procs=1)[0]["result"]["device"] == "cpu"


def test_run_computes_only_missing_and_keeps_order(records_dir, monkeypatch):
    ctx = runner.Context("smoke")
    first = runner.run(jobs_of([1, 2]), double, ctx, n_procs=1)
    assert [r["result"]["value"] for r in first] == [2, 4]
    calls = []
    monkeypatch.setattr(runner, "map_jobs", lambda fn, kw, **k: calls.append(len(kw)) or [])
    assert runner.run(jobs_of([1, 2]), double, ctx) == first  # nothing missing: no worker
    assert calls == []
    monkeypatch.undo()
    out = runner.run(jobs_of([3, 1, 2]), double, ctx, n_procs=1)
    assert [r["result"]["value"] for r in out] == [6, 2, 4]


def test_stored_reads_only_the_named_keys(records_dir):
    ctx = runner.Context("smoke")
    runner.run(jobs_of([1]), double, ctx, n_procs=1)
    runner.run(jobs_of([1], seed=5), double, ctx, n_procs=1)  # another seed in the same store
    got = runner.stored(jobs_of([1, 2]), "smoke")
    assert got[0]["seed"] == 0 and got[0]["result"]["value"] == 2 and got[1] is None


def test_force_recomputes(records_dir):
    ctx = runner.Context("smoke")
    before = runner.run(jobs_of([7]), double, ctx, n_procs=1)[0]
    runner.run(jobs_of([7]), double, ctx, n_procs=1)
    assert CALLS.count(7) == 1
    after = runner.run(jobs_of([7]), double, ctx, n_procs=1, force=True)[0]
    assert CALLS.count(7) == 2 and after["result"] == before["result"]


def test_context_rejects_unknown_profile():
    with pytest.raises(ValueError, match="profile"):
        runner.Context("huge")


def test_records_carry_the_data_identity_and_other_data_is_refused(records_dir, cifar_small):
    """A record says which data made it; a stored record of other data is never reused
    silently (here: its provenance names another file)."""
    import json

    ctx = runner.Context("smoke")
    job = runner.job(EXPERIMENT, {"x": 4, "dataset": "cifar10_small"}, 0)
    record = runner.run([job], double, ctx, n_procs=1)[0]
    assert record["provenance"]["data"] == cifar_small.identity
    path = job.path("smoke")
    record["provenance"]["data"] = "cifar10_small.npz sha256:0000000000000000"
    path.write_text(json.dumps(record))
    with pytest.raises(runner.DataMismatch, match="delete it to recompute"):
        runner.run([job], double, ctx, n_procs=1)


def test_nested_data_sets_are_found_and_checked_like_top_level_ones(records_dir, cifar_small):
    """A job whose data set is named inside nested params (rank's fine-tuning jobs hold their
    base's params) carries its identity, and another data's record is refused (issue 24)."""
    import json

    assert runner.datasets({"base": {"dataset": "b", "init": {"dataset": "a"}}, "x": [1]}) == [
        "a",
        "b",
    ]
    ctx = runner.Context("smoke")
    job = runner.job(EXPERIMENT, {"x": 5, "base": {"dataset": "cifar10_small"}}, 0)
    record = runner.run([job], double, ctx, n_procs=1)[0]
    assert record["provenance"]["data"] == cifar_small.identity
    record["provenance"]["data"] = "cifar10_small.npz sha256:0000000000000000"
    job.path("smoke").write_text(json.dumps(record))
    with pytest.raises(runner.DataMismatch, match="delete it to recompute"):
        runner.run([job], double, ctx, n_procs=1)
    assert runner.job_data({"a": {"dataset": "p"}, "dataset": "q"}, {"p": "P", "q": "Q"}) == (
        "p: P; q: Q"
    )
    assert runner.job_data({"x": 1}, {}) is None


def test_file_identity_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    path = tmp_path / "w.npz"
    path.write_bytes(b"weights")
    assert runner.file_identity(path) == "sha256:" + hashlib.sha256(b"weights").hexdigest()[:16]


def test_context_jobs_sets_the_worker_count(records_dir, monkeypatch):
    """The worker count lives in the run context (bplib-run's --jobs), never in a profile or key;
    an explicit n_procs still wins."""
    seen = []
    monkeypatch.setattr(runner, "map_jobs", lambda fn, kw, jobs, desc: seen.append(jobs) or [
        fn(**k) for k in kw])  # fmt: skip
    runner.run(jobs_of([11]), double, runner.Context("smoke", device="cpu", jobs=3))
    runner.run(jobs_of([12]), double, runner.Context("smoke", device="cpu"))
    runner.run(jobs_of([13]), double, runner.Context("smoke", device="cpu", jobs=3), n_procs=1)
    assert seen == [3, None, 1]  # None: map_jobs' default (2 on a 2+ core CPU)
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="jobs"):
            runner.Context("smoke", jobs=bad)


def with_arrays(job, ctx):  # a job that stores arrays beside its record (module level)
    from bplib.results import save_arrays

    CALLS.append(job.params["x"])
    save_arrays(ctx.arrays(job), v=[job.params["x"]])
    return {"value": job.params["x"]}


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_record_whose_declared_arrays_are_lost_is_recomputed(records_dir, damage):
    """A stored record beside a missing or corrupt arrays file of a job that declares arrays is
    recomputed (the arrays' error says "delete it to recompute"); intact ones are read back."""
    ctx = runner.Context("smoke", device="cpu")
    x = {"deleted": 21, "corrupt": 22}[damage]
    job = runner.job(EXPERIMENT, {"x": x}, 0, arrays=True)
    runner.run([job], with_arrays, ctx, n_procs=1)
    runner.run([job], with_arrays, ctx, n_procs=1)
    assert CALLS.count(x) == 1
    path = ctx.arrays(job)
    path.unlink() if damage == "deleted" else path.write_bytes(b"not an npz")
    runner.run([job], with_arrays, ctx, n_procs=1)
    assert CALLS.count(x) == 2 and runner.load_arrays(path)["v"].tolist() == [x]


def threads(job, ctx):  # module level: what a job sees of torch's threads
    import torch

    return {"threads": torch.get_num_threads()}


def test_a_lone_missing_job_runs_on_one_thread_as_in_a_worker(records_dir):
    """map_jobs runs one missing job in-process whatever the worker count; it must see one
    thread, as every job in a worker process does, so a record never depends on how many jobs
    happened to be missing (before: all threads unless jobs=1)."""
    for jobs in (None, 2):
        job = runner.job(EXPERIMENT, {"x": 100 + (jobs or 0)}, 0)
        record = runner.run([job], threads, runner.Context("smoke", jobs=jobs))[0]
        assert record["result"]["threads"] == 1, jobs
