"""The records store never reads a wrong file and never loses work (issue 11, cases 3, 4, 7 and
9): temporary files are not records, every corrupt file fails with one error naming it and the
remedy, new files respect the umask, an unwritable store fails before any work starts.

Synthetic tensors only (a tiny linear model on random uint8 images): these tests are about
files, not learning. Each test fails on the code before the fix (2f52f40)."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from bplib import results, runner
from bplib.results import load_arrays, load_or_run, record_path, save_arrays
from bplib.train import TrainConfig, fit

EXPERIMENT = "store_test"
CALLS = []  # jobs computed in this process (n_procs=1 runs in-process)


def work(job, ctx):  # module level: worker processes could run it
    CALLS.append(job.params["x"])
    return {"value": 2 * job.params["x"]}


def assert_names_file(err: BaseException, path) -> None:
    """The one error the store raises for a file that does not load: a ``ValueError`` named
    ``CorruptFile`` whose message holds the path and the remedy."""
    assert type(err).__name__ == "CorruptFile", f"{type(err).__name__}: {err}"
    assert isinstance(err, ValueError)
    assert str(path) in str(err) and "delete it" in str(err), str(err)


def tiny_fit(run_dir, epochs=1):
    """Train a linear model on 16 synthetic uint8 images, checkpointing into ``run_dir``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    cfg = TrainConfig(epochs=epochs, lr=0.01, batch_size=8)
    return fit(model, x, y, cfg, seed=0, run_dir=run_dir, progress=False)


# Case 3: a temporary file left by a kill during a record write is not a record.


def test_temporary_file_in_the_store_is_not_a_record(records_dir):
    for s in (0, 1):
        load_or_run(EXPERIMENT, {}, lambda: {"v": 1}, profile="smoke", seed=s)
    path = record_path(EXPERIMENT, {"seed": 0}, "smoke")
    # A kill between json.dump and os.replace leaves a complete (or partial) temporary file.
    (path.parent / ".tmp-k1ll3d.json").write_text(path.read_text())
    (path.parent / ".tmp-h4lf.json").write_text(path.read_text()[:10])
    # The store is read by key only, and no key is a temporary file's name.
    jobs = [runner.job(EXPERIMENT, {}, s) for s in (0, 1, 2)]
    assert [r and r["seed"] for r in runner.stored(jobs, "smoke")] == [0, 1, None]
    assert not any(j.path("smoke").name.startswith(results.TMP_PREFIX) for j in jobs)


# Case 4 (and 5): every corrupt file fails with one error naming it.

BAD_RECORDS = {
    "empty": "",
    "truncated": '{"experiment": "store_test", "profile": "smo',
    "no_seed": json.dumps({"experiment": EXPERIMENT, "profile": "smoke", "result": {}}),
    "not_an_object": "[1, 2]",
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
@pytest.mark.parametrize("reader", ["runner.load", "runner.run", "load_or_run"])
def test_corrupt_record_is_named(records_dir, kind, reader):
    job = runner.job(EXPERIMENT, {"x": 3}, 0)
    path = job.path("smoke")
    path.parent.mkdir(parents=True)
    path.write_text(BAD_RECORDS[kind])
    read = {
        "runner.load": lambda: runner.load(job, "smoke"),
        "runner.run": lambda: runner.run([job], work, runner.Context("smoke"), n_procs=1),
        "load_or_run": lambda: load_or_run(  # force=False: reads the stored record
            EXPERIMENT, {"x": 3}, lambda: {"v": 0}, profile="smoke", seed=0
        ),
    }[reader]
    with pytest.raises((ValueError, KeyError)) as info:
        read()
    assert_names_file(info.value, path)
    assert 3 not in CALLS  # never recomputed silently


def npz_bytes(tmp_path) -> bytes:
    save_arrays(tmp_path / "good.npz", k=np.arange(1000.0))
    return (tmp_path / "good.npz").read_bytes()


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "flipped_byte", "npy"])
def test_corrupt_arrays_file_is_named(tmp_path, kind):
    good = npz_bytes(tmp_path)
    flipped = bytearray(good)
    flipped[60] ^= 0xFF  # inside the compressed data
    content = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "garbage": b"not an archive " * 8,
        "flipped_byte": bytes(flipped),
    }
    path = tmp_path / "a.npz"
    if kind == "npy":  # a lone array under the .npz name
        with open(path, "wb") as f:
            np.save(f, np.arange(3))
    else:
        path.write_bytes(content[kind])
    with pytest.raises(Exception) as info:  # noqa: B017 (before the fix: EOFError, zlib.error...)
        load_arrays(path)
    assert_names_file(info.value, path)


def test_missing_arrays_file_is_not_called_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_arrays(tmp_path / "absent.npz")


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "not_a_checkpoint"])
def test_corrupt_checkpoint_is_named(tmp_path, kind):
    tiny_fit(tmp_path / "good")
    good = (tmp_path / "good" / "checkpoint.pt").read_bytes()
    ckpt = tmp_path / "bad" / "checkpoint.pt"
    ckpt.parent.mkdir()
    if kind == "not_a_checkpoint":
        torch.save({"model": {}}, ckpt)
    else:
        content = {"empty": b"", "truncated": good[: len(good) // 2], "garbage": b"x" * 64}
        ckpt.write_bytes(content[kind])
    with pytest.raises(Exception) as info:  # noqa: B017 (before: EOFError, RuntimeError, KeyError)
        tiny_fit(ckpt.parent, epochs=2)
    assert_names_file(info.value, ckpt)
    assert "run_dir" in str(info.value)


def test_corrupt_file_error_crosses_processes_and_force_rewrites(records_dir):
    path = record_path(EXPERIMENT, {"seed": 0}, "smoke")
    path.parent.mkdir(parents=True)
    path.write_text("")
    with pytest.raises(ValueError) as info:
        load_or_run(EXPERIMENT, {}, lambda: {"v": 1}, profile="smoke", seed=0)
    again = pickle.loads(pickle.dumps(info.value))  # worker errors reach the parent pickled
    assert str(again) == str(info.value) and type(again) is type(info.value)
    rec = load_or_run(EXPERIMENT, {}, lambda: {"v": 1}, profile="smoke", seed=0, force=True)
    assert results.load_or_run(EXPERIMENT, {}, dict, profile="smoke", seed=0) == rec


# Case 9: new files readable by the group, respecting the umask.


@pytest.fixture(params=[0o002, 0o022])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_new_record_and_arrays_respect_the_umask(records_dir, umask):
    expected = {0o002: 0o664, 0o022: 0o644}[umask]
    load_or_run(EXPERIMENT, {}, lambda: {"v": 1}, profile="smoke", seed=0)
    path = record_path(EXPERIMENT, {"seed": 0}, "smoke")
    save_arrays(path.with_suffix(".npz"), k=np.arange(3))
    assert mode(path) == expected and mode(path.with_suffix(".npz")) == expected
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.stem + ".npz"]


def test_new_checkpoint_respects_the_umask(tmp_path, umask):
    tiny_fit(tmp_path)  # torch.save opens like open(): this held before the fix as well
    assert mode(tmp_path / "checkpoint.pt") == {0o002: 0o664, 0o022: 0o644}[umask]


# Case 7 (the store part): an unwritable store is found before any work starts.


@pytest.fixture
def unwritable(tmp_path, monkeypatch):
    """A records store below a plain file: no folder can be made there, even by root (a chmod
    0o500 folder would not stop root, and CI may run as root)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("BPLIB_RECORDS", str(blocker / "records"))
    return blocker / "records"


@pytest.mark.parametrize("n_procs", [1, None])
def test_unwritable_store_fails_before_work(unwritable, monkeypatch, n_procs):
    started = []
    real_map = runner.map_jobs
    monkeypatch.setattr(runner, "map_jobs", lambda *a, **k: started.append(1) or real_map(*a, **k))
    CALLS.clear()
    with pytest.raises(OSError) as info:
        runner.run([runner.job(EXPERIMENT, {"x": 5}, 0)], work, runner.Context("smoke"), n_procs)
    assert started == [] and CALLS == []  # no worker started, nothing computed
    assert str(unwritable) in str(info.value) and "BPLIB_RECORDS" in str(info.value)


def test_unwritable_root_of_context_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    root = tmp_path / "a_file" / "store"
    CALLS.clear()
    with pytest.raises(OSError) as info:
        runner.run([runner.job(EXPERIMENT, {"x": 6}, 0)], work, runner.Context("smoke", root=root))
    assert CALLS == [] and str(root) in str(info.value) and "BPLIB_RECORDS" in str(info.value)


def test_load_or_run_checks_the_store_before_fn(unwritable):
    calls = []
    with pytest.raises(OSError, match="BPLIB_RECORDS"):
        load_or_run(EXPERIMENT, {}, lambda: calls.append(1) or {}, profile="smoke")
    assert calls == []


def test_writable_store_probe_leaves_nothing(records_dir):
    runner.run([runner.job(EXPERIMENT, {"x": 7}, 0)], work, runner.Context("smoke"), n_procs=1)
    folder = runner.job(EXPERIMENT, {"x": 7}, 0).path("smoke").parent
    assert [p.name for p in folder.iterdir()] == [
        runner.job(EXPERIMENT, {"x": 7}, 0).path("smoke").name
    ]
