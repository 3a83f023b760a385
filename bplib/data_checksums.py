"""The checksum list that ships with :mod:`bplib.data`, and the verification of offline npz
files against it.

A file is checked in order: readable npz (else the error names the file, never a bare
``BadZipFile``), keys, shape, dtype, count and label range (a CHW or cut copy fails at load, not
as a tensor-size error deep in training), then the sha256 of each array's raw bytes against
:data:`SHA256`. Hashing 157 MB costs a few tenths of a second, so a verified file version
(resolved path, size, mtime_ns, ctime_ns) is remembered in ``$BPLIB_CACHE/verified.json``
(default ``~/.cache/bplib/verified.json``) and a warm load skips the hashing. The cache is only a
cache: unreadable, it is rebuilt with a warning; unwritable, every load hashes again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()

# The layout every shipped npz must have: file -> {array: (shape, dtype, labels lie in
# [0, bound) or None)}. Images are HWC like torchvision's ``.data``; a CHW or cut copy fails here,
# at load, instead of as a tensor-size error deep inside training.
_IMG = (32, 32, 3)


def _cifar10_layout(n_train: int) -> dict:
    # Both CIFAR-10 files hold the same first 1,000 official test images.
    return {
        "x_train": ((n_train, *_IMG), "uint8", None),
        "y_train": ((n_train,), "uint8", 10),
        "x_test": ((1000, *_IMG), "uint8", None),
        "y_test": ((1000,), "uint8", 10),
        "classes": ((10,), None, None),  # names checked in check_layout
    }


LAYOUT = {
    "cifar10.npz": _cifar10_layout(50000),
    "cifar10_small.npz": _cifar10_layout(2000),
    "cifar100_foolbox_test20.npz": {
        "x_test": ((20, *_IMG), "uint8", None),
        "y_test_fine": ((20,), "uint8", 100),
        "test_orig_index": ((20,), "int16", None),
    },
}
# sha256 of each array's raw bytes (``arr.tobytes()``). cifar10.npz: the digests published in
# shared/data/cifar/README.md; the other two computed once from the shipped files. A file that
# differs in one bit is refused: results from other pixels must not pass as CIFAR.
SHA256 = {
    "cifar10.npz/x_train": "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
    "cifar10.npz/y_train": "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
    "cifar10.npz/x_test": "da362006b99671213d1a5d856cab2bedf64d40bad4501630ee60f4ceb2d3ec7f",
    "cifar10.npz/y_test": "636a087e604331a0b9dafc94b6e9ade0c9cec72c4400d12473ccdb3e264474c1",
    "cifar10_small.npz/x_train": "48bb9c317980e186b159dcfcb952fa1079e1aa552a1df3ea4b271375dfbe3207",
    "cifar10_small.npz/y_train": "be1c28c816d430be791ef07694742adff327158d0ef082fb990dfadc30a427f0",
    "cifar10_small.npz/x_test": "da362006b99671213d1a5d856cab2bedf64d40bad4501630ee60f4ceb2d3ec7f",
    "cifar10_small.npz/y_test": "636a087e604331a0b9dafc94b6e9ade0c9cec72c4400d12473ccdb3e264474c1",
    "cifar100_foolbox_test20.npz/x_test":
        "72356499c27e1ea02eebd04f2abbbb21196151ca382561f3b674548084b5c0c2",
    "cifar100_foolbox_test20.npz/y_test_fine":
        "be5690bc5b074b5c14542bf883dc392fc54505d220fa434d88e8675844b21ad0",
    "cifar100_foolbox_test20.npz/test_orig_index":
        "cf6cf8ff894814c395340e3b27ff21b83897b43f30ccad058d8340de5dd46ed8",
}  # fmt: skip
_FIX = (
    "replace it with a fresh copy of the offline data (shared/data/cifar), or unset BPLIB_DATA "
    "and data_dir to use torchvision's download"
)


class DataFileError(ValueError):
    """An offline data file exists but is unreadable, has the wrong layout or the wrong pixels.
    The message names the file, what is wrong and what to do; ``path`` holds the path."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}; {_FIX}")
        self.path = Path(path)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays ``LAYOUT`` lists for this file name, or a DataFileError naming the file."""
    if path.name not in LAYOUT:
        raise DataFileError(path, f"no checksum list entry for this name (known: {list(LAYOUT)})")
    try:
        with np.load(path) as z:
            missing = [k for k in LAYOUT[path.name] if k not in z.files]
            if missing:
                raise DataFileError(path, f"array(s) {missing} missing (it holds {z.files})")
            return {k: z[k] for k in LAYOUT[path.name]}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        if isinstance(err, DataFileError):
            raise
        # A truncated, empty or damaged file: name it instead of a bare BadZipFile.
        raise DataFileError(path, f"not a readable npz ({type(err).__name__}: {err})") from err


def check_layout(path: Path, arrays: dict[str, np.ndarray]) -> None:
    for key, (shape, dtype, bound) in LAYOUT[path.name].items():
        a = arrays[key]
        if a.shape != shape:
            what = (
                f"{a.shape[0]:,} entries, expected {shape[0]:,}"
                if a.shape[1:] == shape[1:]
                else f"shape {a.shape}, expected shape {shape}" + " (N, H, W, C)" * (a.ndim == 4)
            )
            raise DataFileError(path, f"{key} has {what}")
        if dtype is not None and a.dtype != dtype:
            raise DataFileError(path, f"{key} has dtype {a.dtype}, expected {dtype}")
        if bound is not None and (a.min() < 0 or a.max() >= bound):
            raise DataFileError(
                path, f"{key} holds labels {a.min()}..{a.max()}, expected 0..{bound - 1}"
            )
    if "classes" in arrays and [str(c) for c in arrays["classes"]] != CIFAR10_CLASSES:
        raise DataFileError(path, f"classes are {arrays['classes'].tolist()}, not CIFAR-10's")


def _array_digest(a: np.ndarray) -> str:
    # hashlib reads the array's buffer in place (no 150 MB copy); for the C-contiguous arrays
    # np.load returns this equals sha256(a.tobytes()).
    return hashlib.sha256(np.ascontiguousarray(a)).hexdigest()


def _offline_identity(name: str) -> str:
    """A short digest over a file's listed array digests: equal for every verified copy."""
    listed = sorted((k, v) for k, v in SHA256.items() if k.startswith(name + "/"))
    return f"{name} sha256:{hashlib.sha256(repr(listed).encode()).hexdigest()[:16]}"


def torchvision_identity(name: str) -> str:
    try:
        version = importlib.metadata.version("torchvision")  # no import: fast, per job
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    return f"torchvision {version} {name}"


def cache_file() -> Path:
    """The JSON file remembering verified file versions (``$BPLIB_CACHE`` or ~/.cache/bplib)."""
    folder = os.environ.get("BPLIB_CACHE") or Path.home() / ".cache" / "bplib"
    return Path(folder) / "verified.json"


def file_version(path: Path) -> dict:
    # ctime too: os.utime can put an edited file's mtime back, but not its ctime.
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _read_cache(cache: Path) -> dict:
    try:
        entries = json.loads(cache.read_text())
        if isinstance(entries, dict):
            return entries
        problem = "not a JSON object"
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        problem = f"{type(err).__name__}: {err}"
    # Only a cache: losing it costs one re-hash, so warn and rebuild it.
    warnings.warn(
        f"ignoring the data verification cache {cache} ({problem}); it is rewritten", stacklevel=3
    )
    return {}


def cached_identity(path: Path, version: dict) -> str | None:
    entry = _read_cache(cache_file()).get(str(path.resolve()))
    identity = _offline_identity(path.name)  # a changed checksum list invalidates old entries
    return identity if entry == {**version, "identity": identity} else None


def _remember(path: Path, version: dict, identity: str) -> None:
    cache = cache_file()
    entries = {k: v for k, v in _read_cache(cache).items() if Path(k).exists()}
    entries[str(path.resolve())] = {**version, "identity": identity}
    # A unique name and open("x"): concurrent jobs never share a temporary file, and the mode
    # follows the umask (mkstemp would make it 0600).
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, cache)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"could not write the data verification cache {cache} ({err}): every load hashes "
            "the data again; set BPLIB_CACHE to a writable folder",
            stacklevel=3,
        )


def verify_arrays(path: Path, version: dict, arrays: dict[str, np.ndarray]) -> str:
    """Layout, then checksums unless this file version was verified before; its identity."""
    check_layout(path, arrays)
    identity = cached_identity(path, version)
    if identity is not None:
        return identity
    for key, a in arrays.items():
        expected = SHA256.get(f"{path.name}/{key}")
        found = _array_digest(a) if expected else None
        if expected and found != expected:
            raise DataFileError(
                path,
                f"{key} does not match the checksum shipped with bplib.data: expected sha256 "
                f"{expected}, found {found} (the pixels or labels differ from the published data)",
            )
    identity = _offline_identity(path.name)
    _remember(path, version, identity)
    return identity


def read_verified(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """The arrays of an offline npz and its identity, after :func:`verify_arrays`."""
    path = Path(path)
    version = file_version(path)  # before reading: a file replaced meanwhile is re-hashed next time
    arrays = read_npz(path)
    return arrays, verify_arrays(path, version, arrays)


def verify_npz(path: str | os.PathLike) -> str:
    """Check an offline npz (keys, shape, dtype, count, label range, sha256) and return its
    identity; raise :class:`DataFileError` naming the file and what is wrong."""
    return read_verified(path)[1]
