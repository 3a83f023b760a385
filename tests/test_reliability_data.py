"""Issue 11, case 5 and the npz part of case 4: offline data is verified on load (layout, count,
checksum), a broken file names its path, and the data's identity reaches provenance.

Every test works on a COPY of the real ``cifar10_small.npz`` written into ``tmp_path`` (the
shared files are read-only and never modified), with a private verification cache
(``BPLIB_CACHE``). Modules are reached as ``data.<name>`` so that each test, run against the
code before the fix, fails on its own instead of the whole file failing to import.
"""

import json
import os
import warnings

import numpy as np
import pytest

from bplib import data, results

SMALL = "cifar10_small.npz"


@pytest.fixture(scope="module")
def small_arrays():
    folder = data.offline_dir()
    if folder is None or not (folder / SMALL).exists():
        pytest.skip("offline CIFAR-10 (cifar10_small.npz) not found: set BPLIB_DATA")
    with np.load(folder / SMALL) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def copy_dir(tmp_path, monkeypatch, small_arrays):
    """A function writing a (possibly modified) copy of cifar10_small.npz; returns its folder."""
    monkeypatch.setenv("BPLIB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    folder.mkdir()

    def write(**changes):
        arrays = {k: v.copy() for k, v in small_arrays.items()}
        for key, value in changes.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value
        np.savez(folder / SMALL, **arrays)  # uncompressed, like the shipped file
        return folder

    return write


def test_exact_copy_loads_with_its_identity(copy_dir):
    folder = copy_dir()
    d = data.load_cifar("cifar10_small", data_dir=folder)
    assert d.x_train.shape == (2000, 3, 32, 32)
    assert d.identity.startswith("cifar10_small.npz sha256:") and len(d.identity) == 41
    assert d.to("cpu").identity == d.identity
    assert data.data_identity("cifar10_small", folder) == d.identity


def test_one_pixel_changed_fails_with_checksum_error(copy_dir, small_arrays):
    x = small_arrays["x_train"].copy()
    x[123, 4, 5, 0] ^= 1
    folder = copy_dir(x_train=x)
    with pytest.raises(ValueError) as err:
        data.load_cifar("cifar10_small", data_dir=folder)
    msg = str(err.value)
    assert str(folder / SMALL) in msg and "x_train" in msg and "checksum" in msg
    assert "48bb9c317980e186b159dcfcb952fa1079e1aa552a1df3ea4b271375dfbe3207" in msg  # expected
    assert "found" in msg
    with pytest.raises(ValueError, match="checksum"):  # nor is its identity ever given out
        data.data_identity("cifar10_small", folder)


def _wrong(small):
    x, y = small["x_train"], small["y_train"]
    y_bad = y.copy()
    y_bad[7] = 10
    return {
        "chw_layout": ({"x_train": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}, r"shape"),
        "100_images": ({"x_train": x[:100], "y_train": y[:100]}, r"100 entries, expected 2,000"),
        "float_pixels": ({"x_train": x.astype(np.float32)}, r"dtype float32, expected uint8"),
        "label_out_of_range": ({"y_train": y_bad}, r"labels 0\.\.10, expected 0\.\.9"),
        "missing_key": ({"y_test": None}, r"\['y_test'\] missing"),
    }


@pytest.mark.parametrize(
    "case", ["chw_layout", "100_images", "float_pixels", "label_out_of_range", "missing_key"]
)
def test_wrong_layout_fails_at_load_naming_file(copy_dir, small_arrays, case):
    changes, pattern = _wrong(small_arrays)[case]
    folder = copy_dir(**changes)
    with pytest.raises(ValueError, match=pattern) as err:
        data.load_cifar("cifar10_small", data_dir=folder)
    assert str(folder / SMALL) in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped_byte"])
def test_corrupt_npz_error_names_path(copy_dir, damage):
    folder = copy_dir()
    path = folder / SMALL
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # one byte inside x_train's pixels: the zip CRC or the checksum must catch it
        path.write_bytes(raw[:4_000_000] + bytes([raw[4_000_000] ^ 1]) + raw[4_000_001:])
    with pytest.raises(ValueError) as err:  # DataFileError, not a bare BadZipFile / EOFError
        data.load_cifar("cifar10_small", data_dir=folder)
    assert str(path) in str(err.value) and "fresh copy" in str(err.value)


def test_cache_skips_hashing_on_warm_load_and_identity_reads_no_pixels(copy_dir, monkeypatch):
    from bplib import data_checksums as dc

    folder = copy_dir()
    hashed = []
    digest = dc._array_digest
    monkeypatch.setattr(dc, "_array_digest", lambda a: hashed.append(a.shape) or digest(a))
    first = data.load_cifar("cifar10_small", data_dir=folder)
    assert len(hashed) == 4  # cold: x_train, y_train, x_test, y_test
    second = data.load_cifar("cifar10_small", data_dir=folder)
    assert len(hashed) == 4 and second.identity == first.identity  # warm: no hashing

    def no_reading(*a, **k):
        raise AssertionError("data_identity read the npz although the cache knows it")

    with monkeypatch.context() as m:
        m.setattr(np, "load", no_reading)
        assert data.data_identity("cifar10_small", folder) == first.identity
    entry = json.loads(dc.cache_file().read_text())[str((folder / SMALL).resolve())]
    assert entry["identity"] == first.identity and entry["size"] == (folder / SMALL).stat().st_size
    # A new file version (here only its mtime moves) is hashed again.
    st = (folder / SMALL).stat()
    os.utime(folder / SMALL, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    data.load_cifar("cifar10_small", data_dir=folder)
    assert len(hashed) == 8


def test_edit_after_verification_is_still_caught(copy_dir, small_arrays):
    folder = copy_dir()
    data.load_cifar("cifar10_small", data_dir=folder)  # verified and cached
    st = (folder / SMALL).stat()
    y = small_arrays["y_train"].copy()
    y[0] = (y[0] + 1) % 10
    copy_dir(y_train=y)  # same size; put the mtime back as a careless copy tool might
    os.utime(folder / SMALL, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match="y_train does not match the checksum"):
        data.load_cifar("cifar10_small", data_dir=folder)


def test_corrupt_cache_is_rebuilt_with_a_warning(copy_dir, tmp_path):
    folder = copy_dir()
    cache = tmp_path / "cache" / "verified.json"
    cache.parent.mkdir()
    cache.write_text('{"truncated": ')
    with pytest.warns(UserWarning, match=str(cache)):
        d = data.load_cifar("cifar10_small", data_dir=folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.data_identity("cifar10_small", folder) == d.identity  # rebuilt, valid
    assert oct(cache.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not 0600


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_identity_of_the_download_path_names_torchvision(tmp_path, monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(data, "DEFAULT_OFFLINE_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("BPLIB_DATA", raising=False)
    version = importlib.metadata.version("torchvision")
    assert data.data_identity("cifar10") == f"torchvision {version} cifar10"
    assert data.data_identity("cifar100", tmp_path) == f"torchvision {version} cifar100"
    with pytest.raises(ValueError, match="dataset='mnist'"):
        data.data_identity("mnist")


def test_provenance_stores_the_data_identity():
    assert results.provenance("cpu", 1.0, data="cifar10_small.npz sha256:0123")["data"] == (
        "cifar10_small.npz sha256:0123"
    )
    assert results.provenance("cpu", 1.0)["data"] is None  # unchanged callers keep working
