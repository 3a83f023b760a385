"""Tests of the sampled empirical NTK (bplib.measures.ntk) and of claim 3's runs, tables and
verdict (bplib.claims.ntk)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bplib import runner
from bplib.claims import ntk as claim
from bplib.claims.ntk import build_family, collect, load_kernels, summarize, width_trend
from bplib.measures.ntk import (
    correlation,
    kernel_measures,
    ntk,
    ntk_images,
    ntk_naive,
    relative_change,
    rescaling,
)
from bplib.memory import keep_freed_memory
from bplib.models import make_model
from bplib.profiles import get_profile

REPO = Path(__file__).resolve().parent.parent


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


def _tiny_cfg(**overrides):
    """A smoke profile shrunk to one 2-layer MLP of width 8 (and the trajectory run)."""
    kw = dict(n_train=128, epochs=1, lr=0.01, batch_size=64, n_images=3, explorer_images=2)
    return get_profile("ntk", "smoke", 0, widths={"mlp2": [8]}, **{**kw, **overrides})


def test_work_on_real_cifar_stores_record_and_kernels(cifar_small, records_dir):
    job = claim.jobs(_tiny_cfg())[0]
    ctx = runner.Context("smoke", device="cpu")
    (rec,) = runner.run([job], claim.work, ctx, n_procs=1)
    res = rec["result"]
    assert res["diverged"] is None and res["n_params"] == 3083 * 8 + 10
    for s in ("random", "official"):
        assert 0 < res["measures"][s]["relative_change"] < 10
        assert -1 <= res["measures"][s]["correlation"] <= 1
    kernels = load_kernels(rec)
    assert kernels["phi0"].shape == (20, 20) and kernels["phi1"].dtype == np.float32
    again = runner.run([job], claim.work, ctx, n_procs=1)[0]
    assert again["provenance"] == rec["provenance"]  # read back, not recomputed
    rows = collect([rec], "official")
    assert rows[0]["correlation"] == res["measures"]["official"]["correlation"]


def test_save_and_load_arrays_roundtrip(tmp_path):
    from bplib.results import load_arrays, save_arrays

    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    save_arrays(tmp_path / "x.npz", a=a, b=np.ones(2))
    out = load_arrays(tmp_path / "x.npz")
    assert np.array_equal(out["a"], a) and out["a"].dtype == np.float16
    assert sorted(out) == ["a", "b"]


# ----------------------------------------------------------------------- records and keys
@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_jobs_keys_hold_the_configuration_only(profile):
    cfg = get_profile("ntk", profile)
    jobs = claim.jobs(cfg)
    n_widths = sum(len(ws) for ws in cfg.widths.values()) * len(cfg.seeds)
    assert len(jobs) == n_widths + 1 and jobs[-1].experiment == "ntk_trajectory"
    assert jobs[-1].params["epochs"] == cfg.trajectory_epochs and jobs[-1].cost > jobs[0].cost
    for j in jobs:  # the old key leaked the runner's device and the loop variable s
        assert not {"device", "s", "data_dir", "seed", "profile"} & set(j.params)
        assert set(claim.SETTINGS) <= set(j.params)
    assert len({j.path(profile) for j in jobs}) == len(jobs)
    with pytest.raises(ValueError, match="family"):
        claim.jobs(get_profile("ntk", profile, widths={"vgg": [1]}))


def test_committed_cpu_records_are_found_by_the_job_keys_and_their_kernels_load():
    root = REPO / "data" / "records"
    records = runner.stored(claim.jobs(get_profile("ntk", "cpu")), "cpu", root)
    assert all(r is not None for r in records)
    phi = load_kernels(records[-1], root)  # the trajectory run: the full 25-image kernels
    assert phi["phi0"].shape == (250, 250) and phi["phi1"].dtype == np.float32
    assert load_kernels(records[0], root)["phi0"].shape == (100, 100)  # 10 explorer images


def test_summarize_committed_cpu_records_gives_the_results_page_text():
    cfg = get_profile("ntk", "cpu")
    records = runner.stored(claim.jobs(cfg), "cpu", REPO / "data" / "records")
    s = summarize(records, cfg)
    assert s.verdict == (  # as the results page showed before the restructure
        "2-layer MLP: rises; 4-layer MLP: rises; ConvNet: unclear; WRN-16-k: rises; "
        "ResNet-18 (skip, BN): rises; ResNet-18 (no skip, BN): unclear; "
        "ResNet-18 (skip, no BN): unclear (n trained < 3); "
        "ResNet-18 (no skip, no BN): unclear (n trained < 3)"
    )
    assert s.ours.startswith(
        "slope of the correlation per decade of parameters: 2-layer MLP +0.208 [+0.149, +0.266] "
        "(n=10 runs); 4-layer MLP +0.238 [+0.181, +0.296] (n=10 runs); ConvNet +0.227"
    )
    assert s.glue["ntk_convnet_slope"] == "+0.227 [-0.132, +0.585]"
    assert s.glue["ntk_wrn_slope"] == "+0.114 [+0.040, +0.188]"
    assert s.glue["ntk_median_scale_fraction"] == "0.18" and s.glue["ntk_n_seeds"] == 2
    assert len(s.tables["networks"][1]) == len(s.tables["samples"][1]) == 70
    assert [r[0] for r in s.tables["trends"][1]] == [claim.LABELS[f] for f in cfg.widths]
    assert "Figure 1" in claim.paper_headline() and "WRN-16-k: falls" in claim.paper_headline()


def _synthetic_record(family, width, seed, corr, train_acc=50.0, experiment="ntk_width"):
    m = {"relative_change": 1.0, "correlation": corr, "scale": 1.0, "scale_fraction": 0.25,
         "shape_change": 0.5}  # fmt: skip
    result = {"diverged": None, "n_params": int(1000 * width), "train_acc": train_acc,
              "measures": {"random": m, "official": {**m, "correlation": corr / 2}}}  # fmt: skip
    params = {"family": family, "width": width, "trajectory": experiment != "ntk_width"}
    return {"experiment": experiment, "params": params, "seed": seed, "result": result}


def test_summarize_synthetic_records_rising_flat_and_untrained_families():
    widths = {"convnet": [1, 10, 100], "wrn16": [1, 2]}
    cfg = get_profile("ntk", "smoke", [0, 1], widths=widths, min_train_acc=20.0)
    records = [
        _synthetic_record("convnet", w, s, 0.5 + 0.1 * k + 0.01 * s)
        for k, w in enumerate([1, 10, 100])
        for s in (0, 1)
    ] + [_synthetic_record("wrn16", w, s, 0.5, train_acc=5.0) for w in (1, 2) for s in (0, 1)]
    records.append(_synthetic_record("convnet", 4, 0, 0.1, experiment="ntk_trajectory"))
    s = summarize(records, cfg)
    assert s.verdict == "ConvNet: rises; WRN-16-k: unclear (n trained < 3)"
    assert s.glue["ntk_verdict_convnet"] == "rises" and s.glue["ntk_wrn_slope"] == "n/a"
    assert s.glue["ntk_median_scale_fraction"] == "0.25" and s.glue["ntk_n_seeds"] == 2
    assert "ConvNet +0.100 [" in s.ours and "WRN-16-k n/a (n=0 runs)" in s.ours
    headers, rows = s.tables["networks"]
    assert len(rows) == 10 and rows[0][:3] == ["ConvNet", 1, 1000]  # trajectory run not a row
    headers, rows = s.tables["samples"]
    assert headers[2] == "seed" and rows[1] == ["ConvNet", 1, 1, 0.51, 0.255]  # every seed
    trend = s.tables["trends"][1][1]
    assert trend[2] == 4 and trend[4] == "falls as width grows"  # 4 untrained runs left out


def test_migration_script_renames_synthetic_old_records_to_the_job_keys(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from migrate_ntk_keys import migrate
    finally:
        sys.path.remove(str(REPO / "scripts"))
    cfg = get_profile("ntk", "smoke")
    job = claim.jobs(cfg)[0]
    old = {**job.params, "device": "auto", "s": "official", "seed": job.seed}
    record = {"experiment": job.experiment, "profile": "smoke", "seed": job.seed, "params": old,
              "result": {"x": 1}, "provenance": {"commit": "c"}}  # fmt: skip
    folder = tmp_path / "smoke" / job.experiment
    folder.mkdir(parents=True)
    (folder / "old.json").write_text(json.dumps(record))
    np.savez(folder / "old.npz", phi0=np.ones(2))
    mapping = migrate(tmp_path / "smoke")
    assert list(mapping.values()) == [str(job.path("smoke", tmp_path))]
    (rec,) = runner.stored([job], "smoke", tmp_path)
    assert rec["params"] == {**job.params, "seed": job.seed} and rec["result"] == {"x": 1}
    assert job.path("smoke", tmp_path).with_suffix(".npz").exists()
    assert not (folder / "old.json").exists() and migrate(tmp_path / "smoke") == {}


def test_benchmark_runs_on_a_tiny_net():
    cmd = [sys.executable, str(REPO / "benchmarks" / "ntk_benchmark.py"), "--family", "mlp2",
           "--width", "4", "--images", "2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "ratio official / ours" in out
