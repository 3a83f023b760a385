"""A write that fails (a full disk, simulated) names the file being written, leaves what was
stored before as it was and no temporary file behind (issue 27, item 4). Synthetic tensors only.
Before the fix: ``OSError: [Errno 28] No space left on device`` with no path for a record, and
torch's ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos`` for a
checkpoint, which also left ``checkpoint.tmp`` behind."""

import errno
import json
import os
import pickle

import numpy as np
import pytest
import torch
from test_reliability_store import tiny_fit

from bplib.results import load_arrays, load_or_run, record_path, save_arrays

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4544 vs 4432")


def raise_(err):
    def fail(*args, **kwargs):
        raise err

    return fail


def assert_names(err: BaseException, path) -> None:
    assert str(path) in str(err), str(err)
    again = pickle.loads(pickle.dumps(err))  # worker errors reach the parent pickled
    assert str(again) == str(err) and type(again) is type(err)


def test_full_disk_while_writing_a_record_names_it(records_dir, monkeypatch):
    before = load_or_run("writes", {}, lambda: {"v": 1}, profile="smoke", seed=0)
    path = record_path("writes", {"seed": 0}, "smoke")
    monkeypatch.setattr(os, "fsync", raise_(FULL))
    with pytest.raises(OSError) as info:
        load_or_run("writes", {}, lambda: {"v": 2}, profile="smoke", seed=0, force=True)
    assert info.value.errno == errno.ENOSPC and "record" in str(info.value)
    assert_names(info.value, path)
    assert json.loads(path.read_text()) == before  # the stored record is kept
    assert os.listdir(path.parent) == [path.name]  # no temporary file left


def test_full_disk_while_writing_arrays_names_them(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    save_arrays(path, k=np.arange(3))
    monkeypatch.setattr(np, "savez_compressed", raise_(FULL))
    with pytest.raises(OSError) as info:
        save_arrays(path, k=np.arange(4))
    assert_names(info.value, path)
    assert load_arrays(path)["k"].tolist() == [0, 1, 2] and os.listdir(tmp_path) == ["a.npz"]


@pytest.mark.parametrize("err", [TORCH_FULL, FULL], ids=["torch", "oserror"])
def test_full_disk_while_writing_a_checkpoint_names_it(tmp_path, monkeypatch, err):
    ckpt, real_save, saved = tmp_path / "checkpoint.pt", torch.save, []

    def disk_full_after_one_save(*args, **kwargs):
        if saved:
            raise err
        saved.append(real_save(*args, **kwargs))

    monkeypatch.setattr(torch, "save", disk_full_after_one_save)
    with pytest.raises(OSError) as info:  # before: RuntimeError, naming no file
        tiny_fit(tmp_path, epochs=2)
    assert "checkpoint" in str(info.value) and "unchanged" in str(info.value)
    assert_names(info.value, ckpt)
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0  # the last good one is kept
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # before: checkpoint.tmp left behind
