"""Shared fixtures. Real CIFAR-10 comes from the offline folder; tests needing it skip (saying
why) when it is absent. Synthetic tensors are used only where a test says so in its name."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bplib.data import offline_dir
from bplib.device import set_threads

set_threads(1)  # CI has 2 cores; one thread per test process is fastest for tiny nets


def pytest_configure(config):
    """Register the device stand-in (tests/device_standin.py) before any test runs backward:
    the autograd engine sizes its per-device queues once, at its first backward pass."""
    from device_standin import install

    install()


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
    """A private record store (and checkpoints folder) so tests never touch data/records
    (or ./checkpoints, where the runner keeps each job's lock file)."""
    monkeypatch.setenv("BPLIB_RECORDS", str(tmp_path / "records"))
    monkeypatch.setenv("BPLIB_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "records"


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def site_html() -> Path:
    """The built website's html folder, built once per test session with ``-W`` at
    ``$BPLIB_SITE_PROFILE`` (default ``smoke``: every chapter executes), unless
    ``$BPLIB_SITE_DIR`` names an existing build to check instead."""
    given = os.environ.get("BPLIB_SITE_DIR")
    if given:
        for folder in (Path(given), Path(given) / "_build" / "html", Path(given) / "html"):
            if (folder / "index.html").exists():
                return folder
        pytest.fail(f"BPLIB_SITE_DIR={given} holds no index.html (nor _build/html/index.html)")
    jb = Path(sys.executable).with_name("jupyter-book")
    if not jb.exists() and shutil.which("jupyter-book") is None:
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    profile = os.environ.get("BPLIB_SITE_PROFILE", "smoke")
    out = REPO / "_build" / profile
    cmd = [str(jb if jb.exists() else shutil.which("jupyter-book")), "build", str(REPO),
           "-W", "-n", "--keep-going", "--all", "--path-output", str(out)]  # fmt: skip
    env = {**os.environ, "BPLIB_PROFILE": profile}
    # A hung kernel fails the build (cell timeout in _config.yml) instead of blocking CI.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"book build -W failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return out / "_build" / "html"
