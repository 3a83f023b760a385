"""Shared fixtures. Real CIFAR-10 comes from the offline folder; tests needing it skip (saying
why) when it is absent. Synthetic tensors are used only where a test says so in its name."""

import pytest
import torch

from bplib.data import offline_dir

torch.set_num_threads(1)  # CI has 2 cores; one thread per test process is fastest for tiny nets


@pytest.fixture(scope="session")
def cifar_small():
    """The offline 2,000-image CIFAR-10 training subset and the 1,000 exact test images."""
    from bplib.data import load_cifar

    folder = offline_dir()
    if folder is None or not (folder / "cifar10_small.npz").exists():
        pytest.skip("offline CIFAR-10 (cifar10_small.npz) not found: set BPLIB_DATA")
    return load_cifar("cifar10_small")


@pytest.fixture
def records_dir(tmp_path, monkeypatch):
    """A private record store so tests never touch data/records."""
    monkeypatch.setenv("BPLIB_RECORDS", str(tmp_path / "records"))
    return tmp_path / "records"
