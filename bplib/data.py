"""CIFAR data as uint8 tensors, batched tensor augmentation, and input normalization.

Conventions
-----------
- Images are held as ``uint8`` tensors ``[N, 3, 32, 32]`` (channels first) on the device they
  are used on; labels as ``int64`` ``[N]``. ``to_float`` maps them to ``[0, 1]`` pixel units.
- Models start with :class:`Normalize`, so attack budgets (PGD ``eps``) are in [0, 1] pixels and
  "normalized inputs or not" (paper Tables 2/3) is one argument of ``make_model``.
- No ``DataLoader``: :func:`batches` draws a permutation from an explicit ``torch.Generator``.

Where the data comes from (:func:`load_cifar`)
----------------------------------------------
1. an npz folder (``data_dir`` argument, else the ``BPLIB_DATA`` environment variable, else
   ``../shared/data/cifar`` beside the repository when it exists) holding ``cifar10.npz`` with
   ``x_train [50000,32,32,3]``, ``y_train``, ``x_test``, ``y_test`` (uint8, HWC);
2. otherwise torchvision's download into ``~/.cache/bplib`` (needs internet).

Offline files are verified on load (:mod:`bplib.data_checksums`). :func:`data_identity` names
the data a result was computed from, for provenance.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bplib import OFFLINE_DATA
from bplib.checks import check_choice, check_int
from bplib.data_checksums import (  # noqa: F401  (DataFileError, verify_npz: public here too)
    DataFileError,
    cached_identity,
    file_version,
    read_verified,
    torchvision_identity,
    verify_npz,
)

# Per-channel statistics of the 50,000 CIFAR-10 training images (published, 0-255 scale),
# divided by 255 to [0, 1] pixel units. Named once: every normalization in the project uses
# these (the official code used four different sets).
CIFAR10_MEAN = tuple(m / 255 for m in (125.306918046875, 122.950394140625, 113.86538318359375))
CIFAR10_STD = tuple(s / 255 for s in (62.9932, 62.0887, 66.7049))
# CIFAR-100 training-set statistics (0-255 scale 129.30, 124.07, 112.43 / 68.17, 65.39, 70.42).
CIFAR100_MEAN = tuple(m / 255 for m in (129.3043, 124.0699, 112.4341))
CIFAR100_STD = tuple(s / 255 for s in (68.1702, 65.3918, 70.4184))

# cifar100_standin: the only real CIFAR-100 images offline (20 test images, foolbox), for the
# paper-profile dry run's CIFAR-100 code paths only: a path test, never a result.
DATASETS = ("cifar10", "cifar100", "cifar10_small", "cifar100_standin")
NUM_CLASSES = {"cifar10": 10, "cifar10_small": 10, "cifar100": 100, "cifar100_standin": 100}
DEFAULT_OFFLINE_DIR = OFFLINE_DATA
NPZ_FILES = {
    "cifar10": "cifar10.npz",
    "cifar10_small": "cifar10_small.npz",
    "cifar100_standin": "cifar100_foolbox_test20.npz",
}
STANDIN_TRAIN = 320  # the stand-in's training split: its 20 images, 16 times (2 batches of 128+)


@dataclass
class CifarData:
    """Train and test split as uint8 ``[N,3,32,32]`` images and int64 labels.

    ``source`` says where the pixels came from (printed by chapters next to results);
    ``test_name`` says what the test split is ("CIFAR-10 test, first 1,000 images" offline).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    source: str
    test_name: str
    # What the pixels are, for provenance: "<file> sha256:<16 hex>" (verified offline npz) or
    # "torchvision <version> <dataset>"; see data_identity.
    identity: str = "unverified"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def first_test(self, n: int | None, name: str = "n_test"):
        """``(x, y)``: the first ``n`` test images (None: all). More than the split holds is
        refused, naming the parameter: slicing would quietly take fewer while the record keeps
        the asked-for number (the offline copy holds only the first 1,000 test images)."""
        if n is not None and n > len(self.x_test):
            raise ValueError(
                f"parameter {name}={n:,} asks for more test images than {self.test_name} holds "
                f"({len(self.x_test):,}); give {name} <= {len(self.x_test):,}, or point data_dir "
                "at the full test set (torchvision downloads it where there is internet)"
            )
        return self.x_test[:n], self.y_test[:n]

    def to(self, device) -> CifarData:
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return dataclasses.replace(self, **moved)


def offline_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The npz folder to read, or None when no offline copy is configured or present."""
    for name, candidate in (("data_dir", data_dir), ("BPLIB_DATA", os.environ.get("BPLIB_DATA"))):
        if candidate:
            if not Path(candidate).is_dir():
                raise FileNotFoundError(f"{name}={str(candidate)!r} is not a directory")
            return Path(candidate)
    return DEFAULT_OFFLINE_DIR if DEFAULT_OFFLINE_DIR.is_dir() else None


def _hwc_to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


def _offline_file(name: str, data_dir) -> Path | None:
    folder = offline_dir(data_dir)
    npz = NPZ_FILES.get(name)
    if folder is not None and npz is not None and (folder / npz).exists():
        return folder / npz
    return None


def data_identity(dataset: str, data_dir=None) -> str:
    """What :func:`load_cifar` with these arguments would load, as a short string for provenance:
    ``"<file> sha256:<16 hex>"`` for a verified offline npz, else ``"torchvision <version>
    <dataset>"``. Reads no pixels when the verification cache knows the file version."""
    check_choice("dataset", dataset, DATASETS)
    path = _offline_file(dataset, data_dir)
    if path is None:
        return torchvision_identity(dataset)
    return cached_identity(path, file_version(path)) or verify_npz(path)


def _standin(arrays: dict, path: Path, identity: str) -> CifarData:
    x, y = _hwc_to_tensor(arrays["x_test"]), _labels(arrays["y_test_fine"])
    reps = STANDIN_TRAIN // len(y)
    return CifarData(
        x.repeat(reps, 1, 1, 1),
        y.repeat(reps),
        x,
        y,
        [f"class {i}" for i in range(100)],
        source=f"offline npz {path} (CIFAR-100 STAND-IN for path tests: 20 test images)",
        test_name="CIFAR-100 stand-in (20 test images; a path test, not a result)",
        identity=identity,
    )


def _from_npz(path: Path, name: str) -> CifarData:
    arrays, identity = read_verified(path)
    if name == "cifar100_standin":
        return _standin(arrays, path, identity)
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    n_test = len(y_test)
    test_name = "CIFAR-10 test" if n_test == 10000 else f"CIFAR-10 test, first {n_test:,} images"
    return CifarData(
        _hwc_to_tensor(x_train),
        _labels(y_train),
        _hwc_to_tensor(x_test),
        _labels(y_test),
        [str(c) for c in arrays["classes"]],
        source=f"offline npz {path}",
        test_name=test_name,
        identity=identity,
    )


def _from_torchvision(name: str, root: Path) -> CifarData:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if name == "cifar100" else torchvision.datasets.CIFAR10
    train = cls(root, train=True, download=True)
    test = cls(root, train=False, download=True)
    label = "CIFAR-100" if name == "cifar100" else "CIFAR-10"
    return CifarData(
        _hwc_to_tensor(train.data),
        _labels(train.targets),
        _hwc_to_tensor(test.data),
        _labels(test.targets),
        list(train.classes),
        source=f"torchvision download ({root})",
        test_name=f"{label} test",
        identity=torchvision_identity(name),
    )


def load_cifar(name: str = "cifar10", data_dir=None, download_root=None) -> CifarData:
    """Load CIFAR-10 (``cifar10``), its first 2,000 training and 1,000 test images
    (``cifar10_small``, for smoke runs), or CIFAR-100 (``cifar100``: torchvision only, the
    offline folder has none). ``cifar100_standin`` is the offline folder's 20 real CIFAR-100
    test images (the training split repeats them to 320): for the paper dry run's code paths.

    Raises ``FileNotFoundError`` naming both ways to get the data when neither works.
    """
    check_choice("dataset", name, DATASETS)
    folder = offline_dir(data_dir)
    npz = NPZ_FILES.get(name)
    path = _offline_file(name, data_dir)
    if path is not None:
        return _from_npz(path, name)
    if name == "cifar100_standin":
        raise FileNotFoundError(
            "dataset='cifar100_standin' is the offline folder's cifar100_foolbox_test20.npz; "
            f"point BPLIB_DATA or data_dir at a folder holding it (looked in {folder or 'none'})"
        )
    root = Path(download_root or Path.home() / ".cache" / "bplib")
    try:
        if name == "cifar10_small":  # the same images as the offline npz: the first 2,000 / 1,000
            full = _from_torchvision("cifar10", root)
            return CifarData(
                full.x_train[:2000],
                full.y_train[:2000],
                full.x_test[:1000],
                full.y_test[:1000],
                full.classes,
                full.source,
                "CIFAR-10 test, first 1,000 images",
                torchvision_identity(name),
            )
        return _from_torchvision(name, root)
    except Exception as err:  # network or md5 failure: say what to do, keep the cause
        raise FileNotFoundError(
            f"Could not load dataset={name!r}. Either (a) point BPLIB_DATA or data_dir at a "
            f"folder with {npz or 'the npz files'} (offline copy; looked in {folder or 'none'}), "
            f"or (b) allow torchvision to download into {root} (needs internet). "
            f"Download error: {err}"
        ) from err


def holdout_split(x: torch.Tensor, y: torch.Tensor, n_holdout: int, seed: int = 0):
    """Split ``n_holdout`` examples off a training set, chosen by a seeded permutation.

    Returns ``(x_fit, y_fit, x_holdout, y_holdout)``; the held-out part is never trained on.
    """
    check_int("n_holdout", n_holdout, low=0, high=len(x) - 1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    keep, hold = perm[n_holdout:].sort().values, perm[:n_holdout].sort().values
    return x[keep], y[keep], x[hold], y[hold]


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int = 0):
    """A seeded random subset of ``n`` examples (all of them when ``n`` is None)."""
    if n is None or n == len(x):
        return x, y
    check_int("n", n, low=1, high=len(x))
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` zero pixels per side + horizontal flip, batched.

    Same distribution as torchvision's ``RandomCrop(32, padding=4)`` followed by
    ``RandomHorizontalFlip()``: every offset in ``0..2*pad`` per axis equally likely, flip with
    probability 1/2, zero fill. Works on any dtype and device (a CUDA tensor stays on its GPU)
    and keeps them; ``generator`` lives on the CPU and draws the offsets, so results are
    identical across devices for one seed.
    """
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    # Drawn in this order on the CPU (dy, dx, flip), then one small copy to x's device; not
    # blocking, so the host queues the next step instead of waiting for the GPU.
    draws = torch.stack(
        [
            torch.randint(0, 2 * pad + 1, (n,), generator=generator),
            torch.randint(0, 2 * pad + 1, (n,), generator=generator),
            (torch.rand(n, generator=generator) < 0.5).long(),
        ]
    ).to(x.device, non_blocking=True)
    dy, dx, flip = draws[0], draws[1], draws[2].bool()
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [n, h]
    cols = dx[:, None] + torch.arange(w, device=x.device)  # [n, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing gathers [n, h, w, c]; move channels back to dim 1.
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
):
    """Yield ``(x_batch, y_batch)``; shuffled by ``generator`` when one is given."""
    check_int("batch_size", batch_size, low=1)
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order.to(x.device, non_blocking=True)  # drawn on the CPU: same order on any device
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


class Normalize(nn.Module):
    """Maps [0, 1] pixels to per-channel standardized inputs; the first layer of a model."""

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
