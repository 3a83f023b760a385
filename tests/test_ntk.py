"""Tests of the sampled empirical NTK (bplib.ntk) and its experiment runner (bplib.ntk_runs)."""

import numpy as np
import pytest
import torch
from torch import nn

from bplib.models import make_model
from bplib.ntk import (
    correlation,
    keep_freed_memory,
    kernel_measures,
    ntk,
    ntk_images,
    ntk_naive,
    relative_change,
    rescaling,
)
from bplib.ntk_runs import build_family, collect, load_kernels, run_ntk, width_trend


def _tiny_nets():
    torch.manual_seed(0)
    return {
        "mlp": make_model("mlp", widths=(12, 7)),
        "convnet": make_model("convnet", width=2),
        "resnet_bn": make_model("resnet18", width=1 / 32),
    }


@pytest.mark.parametrize("name", ["mlp", "convnet", "resnet_bn"])
@pytest.mark.parametrize("method", ["jacrev", "loop"])
@pytest.mark.parametrize("max_elems", [2**26, 3000])
def test_synthetic_ntk_matches_naive_autograd_loop(name, method, max_elems):
    model = _tiny_nets()[name]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = ntk_naive(model, x)
    phi = ntk(model, x, method=method, max_elems=max_elems, image_chunk=2)
    assert phi.shape == (30, 30)
    torch.testing.assert_close(phi, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_synthetic_ntk_float64_close_to_float32_and_symmetric_psd():
    model = _tiny_nets()["convnet"]
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    phi64 = ntk(model, x, dtype="float64")
    phi32 = ntk(model, x)
    assert phi64.dtype == torch.float64 and phi32.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32  # the model itself is not cast
    torch.testing.assert_close(phi32.double(), phi64, rtol=1e-4, atol=1e-4 * phi64.abs().max())
    torch.testing.assert_close(phi64, phi64.T)
    assert torch.linalg.eigvalsh(phi64).min() > -1e-9 * phi64.abs().max()


def test_synthetic_linear_model_kernel_is_gram_kron_identity():
    torch.manual_seed(0)
    model = make_model("mlp", widths=(), in_features=6, num_classes=4, normalize=False)
    x = torch.randn(5, 6, dtype=torch.float64)
    phi = ntk(model, x, dtype="float64")
    gram = x @ x.T + 1.0  # + 1: the bias's gradient is e_k for every image
    torch.testing.assert_close(phi, torch.kron(gram, torch.eye(4, dtype=torch.float64)))


def test_synthetic_bn_net_eval_mode_rows_do_not_depend_on_the_batch_and_mode_restored():
    model = _tiny_nets()["resnet_bn"].train()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    full = ntk(model, x)
    alone = ntk(model, x[:1])
    torch.testing.assert_close(full[:10, :10], alone, rtol=1e-4, atol=1e-6)
    assert model.training


def test_synthetic_measures_identity_scale_and_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20))
    phi = a @ a.T
    m = kernel_measures(phi, phi)
    assert m["relative_change"] == 0 and m["correlation"] == pytest.approx(1)
    assert np.isnan(m["scale_fraction"]) and m["shape_change"] == pytest.approx(0, abs=1e-7)
    assert relative_change(phi, 3 * phi) == pytest.approx(2)
    assert correlation(phi, 3 * phi) == pytest.approx(1)
    r = rescaling(phi, 3 * phi)
    assert r["scale"] == pytest.approx(3) and r["scale_fraction"] == pytest.approx(1)
    other = phi + rng.normal(size=phi.shape)
    for c in (0.5, 7.0):  # correlation and shape change are scale-free; relative change is not
        assert correlation(c * phi, other) == pytest.approx(correlation(phi, other))
        assert rescaling(phi, c * other)["shape_change"] == pytest.approx(
            rescaling(phi, other)["shape_change"]
        )
    assert relative_change(phi, 2 * other) != pytest.approx(relative_change(phi, other))
    assert 0 <= rescaling(phi, other)["scale_fraction"] <= 1


def test_synthetic_ntk_images_official_is_label_sorted_first_batch_and_random_is_seeded():
    y = torch.arange(200) % 10
    x = torch.zeros(200, 1)
    idx = ntk_images(x, y, 25, "official")
    assert (idx < 128).all() and (y[idx] <= 1).all()  # 13 zeros then 12 ones
    assert idx[:13].tolist() == list(range(0, 128, 10))  # stable: original order kept
    r1, r2 = ntk_images(x, y, 25, "random", seed=4), ntk_images(x, y, 25, "random", seed=4)
    assert torch.equal(r1, r2) and len(set(r1.tolist())) == 25
    assert not torch.equal(r1, ntk_images(x, y, 25, "random", seed=5))
    with pytest.raises(ValueError, match="sample"):
        ntk_images(x, y, 25, "sorted")


def test_bad_arguments_raise_clear_errors():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="dtype"):
        ntk(model, torch.zeros(2, 3), dtype="float16")
    with pytest.raises(ValueError, match="method"):
        ntk(model, torch.zeros(2, 3), method="fast")
    with pytest.raises(ValueError, match="family"):
        build_family("vgg", 1)
    assert isinstance(keep_freed_memory(), bool)


def test_build_family_parameter_counts_follow_the_paper_formulas():
    from bplib.models import count_parameters

    w = 20
    assert count_parameters(build_family("mlp2", w)) == 3083 * w + 10
    assert count_parameters(build_family("mlp4", w)) == 2 * w**2 + 3085 * w + 10
    assert count_parameters(build_family("convnet", w)) == 270 * w**2 + 400 * w + 10
    assert count_parameters(build_family("wrn16", 1)) == 175626
    noskip = build_family("resnet18_noskip_nobn", 1 / 16)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in noskip.modules())


def test_width_trend_synthetic_rises_falls_unclear():
    rows = [
        {"family": "convnet", "n_params": 10**k, "correlation": 0.5 + 0.1 * k} for k in range(4)
    ]
    assert width_trend(rows, "convnet")["verdict"] == "rises"
    rows = [{**r, "correlation": 1 - 0.1 * i} for i, r in enumerate(rows)]
    assert width_trend(rows, "convnet")["verdict"] == "falls"
    assert width_trend(rows[:2], "convnet")["verdict"].startswith("unclear")
    flat = [{**r, "correlation": 0.5 + 0.01 * (-1) ** i} for i, r in enumerate(rows)]
    assert width_trend(flat, "convnet")["verdict"] == "unclear"
    untrained = [{**r, "train_acc": 12.0 if i < 2 else 50.0} for i, r in enumerate(rows)]
    trend = width_trend(untrained, "convnet", min_train_acc=20.0)
    assert trend["n"] == 2 and trend["n_left_out"] == 2 and trend["verdict"].startswith("unclear")


def test_run_ntk_on_real_cifar_stores_record_and_kernels(cifar_small, records_dir):
    kw = dict(
        family="mlp2",
        width=8,
        seed=0,
        profile="smoke",
        dataset="cifar10_small",
        n_train=128,
        epochs=1,
        lr=0.01,
        batch_size=64,
        momentum=0.9,
        weight_decay=5e-4,
        n_images=3,
        explorer_images=2,
        device="cpu",
    )
    rec = run_ntk(**kw)
    res = rec["result"]
    assert res["diverged"] is None and res["n_params"] == 3083 * 8 + 10
    for s in ("random", "official"):
        assert 0 < res["measures"][s]["relative_change"] < 10
        assert -1 <= res["measures"][s]["correlation"] <= 1
    kernels = load_kernels(rec)
    assert kernels["phi0"].shape == (20, 20) and kernels["phi1"].dtype == np.float32
    assert run_ntk(**kw)["provenance"] == rec["provenance"]  # read back, not recomputed
    rows = collect([rec], "official")
    assert rows[0]["correlation"] == res["measures"]["official"]["correlation"]


def test_save_and_load_arrays_roundtrip(tmp_path):
    from bplib.results import load_arrays, save_arrays

    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    save_arrays(tmp_path / "x.npz", a=a, b=np.ones(2))
    out = load_arrays(tmp_path / "x.npz")
    assert np.array_equal(out["a"], a) and out["a"].dtype == np.float16
    assert sorted(out) == ["a", "b"]
