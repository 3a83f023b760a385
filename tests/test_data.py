import hashlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from bplib import data
from bplib.data import CIFAR10_MEAN, Normalize, augment, batches, holdout_split, load_cifar


def test_small_shapes_dtypes_range(cifar_small):
    d = cifar_small
    assert d.x_train.shape == (2000, 3, 32, 32) and d.x_train.dtype == torch.uint8
    assert d.x_test.shape == (1000, 3, 32, 32) and d.y_test.dtype == torch.int64
    assert d.y_train.min() == 0 and d.y_train.max() == 9 and d.num_classes == 10
    assert d.x_train.max() > 250 and d.x_train.min() < 5
    assert d.test_name == "CIFAR-10 test, first 1,000 images"
    assert d.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def test_full_training_set_is_exact_cifar10():
    folder = data.offline_dir()
    if folder is None or not (folder / "cifar10.npz").exists():
        pytest.skip("offline cifar10.npz not found: set BPLIB_DATA")
    d = load_cifar("cifar10")
    assert d.x_train.shape == (50000, 3, 32, 32)
    mean = d.x_train.double().mean(dim=(0, 2, 3)).tolist()
    assert mean == [125.306918046875, 122.950394140625, 113.86538318359375]
    assert np.allclose(np.array(CIFAR10_MEAN) * 255, mean, rtol=0, atol=1e-9)
    hwc = d.x_train.permute(0, 2, 3, 1).contiguous().numpy()
    digest = hashlib.sha256(hwc.tobytes()).hexdigest()
    assert digest == "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a"
    assert torch.bincount(d.y_train).tolist() == [5000] * 10


def test_missing_data_error_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_OFFLINE_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("BPLIB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="BPLIB_DATA"):
        load_cifar("cifar10_small")
    with pytest.raises(FileNotFoundError, match="data_dir="):
        load_cifar("cifar10", data_dir=tmp_path / "missing")


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="dataset='mnist'.*cifar10"):
        load_cifar("mnist")


def _expected_augment(x, gen_state, pad=4):
    """Re-draw the offsets from the same generator state and apply torchvision's functional
    crop/flip image by image: the reference our batched version must equal."""
    g = torch.Generator()
    g.set_state(gen_state)
    n = len(x)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    out = []
    for i in range(n):
        img = TF.crop(TF.pad(x[i], [pad]), int(dy[i]), int(dx[i]), 32, 32)
        out.append(TF.hflip(img) if flip[i] else img)
    return torch.stack(out)


def test_augment_equals_torchvision_crop_and_flip(cifar_small):
    x = cifar_small.x_train[:64]
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert torch.equal(augment(x, g), _expected_augment(x, state))


def test_augment_covers_all_offsets_and_flips_half_synthetic():
    # Synthetic: one pixel marks the image's position, so the output reveals the offset.
    n = 20000
    x = torch.zeros(n, 1, 32, 32, dtype=torch.uint8)
    x[:, 0, 0, 0] = 255
    out = augment(x, torch.Generator().manual_seed(0))
    pos = out.view(n, -1).argmax(1)
    visible = out.view(n, -1).max(1).values == 255
    flipped_side = (pos % 32)[visible] >= 16
    assert 0.1 < flipped_side.float().mean() < 0.9  # flips occur
    # The marker stays visible unless the crop moved it out: offsets 0..3 per axis hide it.
    assert abs(visible.float().mean().item() - (5 / 9) ** 2) < 0.02


def test_augment_is_deterministic_under_seed(cifar_small):
    x = cifar_small.x_train[:32]
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_holdout_split_is_seeded_and_disjoint(cifar_small):
    x, y = cifar_small.x_train, cifar_small.y_train
    idx = torch.arange(len(x))
    a_fit, _, a_hold, _ = holdout_split(idx, y, 500, seed=0)
    b_fit, _, b_hold, _ = holdout_split(idx, y, 500, seed=0)
    assert torch.equal(a_hold, b_hold) and len(a_hold) == 500 and len(a_fit) == 1500
    assert not set(a_fit.tolist()) & set(a_hold.tolist())
    with pytest.raises(ValueError, match="n_holdout"):
        holdout_split(x, y, -1)


def test_batches_cover_everything_once_and_follow_generator():
    x = torch.arange(10)
    seen = torch.cat([b for b, _ in batches(x, x, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([b for b, _ in batches(x, x, 3, torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)
    assert [len(b) for b, _ in batches(x, x, 3, drop_last=True)] == [3, 3, 3]
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(x, x, 0))


def test_normalize_maps_mean_to_zero():
    norm = Normalize()
    x = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(norm(x), torch.zeros(2, 3, 4, 4), atol=1e-6)


def test_shipped_files_match_the_shipped_checksum_list(tmp_path, monkeypatch):
    # A private cache, so every file is really hashed here (not taken from an earlier run).
    monkeypatch.setenv("BPLIB_CACHE", str(tmp_path))
    folder = data.offline_dir()
    names = ("cifar10.npz", "cifar10_small.npz", "cifar100_foolbox_test20.npz")
    if folder is None or not all((folder / n).exists() for n in names):
        pytest.skip("offline CIFAR files not found: set BPLIB_DATA")
    for name in names:
        assert data.verify_npz(folder / name).startswith(f"{name} sha256:")
    assert data.data_identity("cifar10") != data.data_identity("cifar10_small")


def test_loaded_data_carries_its_identity(cifar_small):
    assert cifar_small.identity == data.data_identity("cifar10_small")
    assert cifar_small.identity.startswith("cifar10_small.npz sha256:")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_augment_equals_cpu_augment(cifar_small):
    """Offsets and flips come from the CPU generator: a seed gives the same images on a GPU."""
    x = cifar_small.x_train[:256]
    on_cpu = augment(x, torch.Generator().manual_seed(4))
    on_gpu = augment(x.cuda(), torch.Generator().manual_seed(4))
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)


def test_cifar100_standin_is_the_20_real_images_labelled_as_a_stand_in():
    from bplib.data import STANDIN_TRAIN, load_cifar

    d = load_cifar("cifar100_standin")
    assert d.x_test.shape == (20, 3, 32, 32) and d.num_classes == 100
    assert len(d.y_train) == STANDIN_TRAIN and (d.x_train[:20] == d.x_test).all()
    assert "STAND-IN" in d.source and "stand-in" in d.test_name


def test_cifar100_standin_needs_the_offline_folder(tmp_path, monkeypatch):
    from bplib.data import load_cifar

    monkeypatch.setenv("BPLIB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar100_standin.*cifar100_foolbox_test20"):
        load_cifar("cifar100_standin")
