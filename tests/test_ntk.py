"""Tests of the sampled empirical NTK and what surrounds it (bplib.measures.ntk), and of claim
3's runs, gate, control, tables and verdict (bplib.claims.ntk, bplib.claims.ntk.report)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bplib import claims, runner
from bplib.claims import ntk as claim
from bplib.claims.ntk import build_family, report, summarize
from bplib.claims.ntk.report import collect, load_kernels
from bplib.measures.ntk import (
    Linearized,
    correlation,
    kernel_measures,
    ntk,
    ntk_images,
    ntk_naive,
    parameters_of,
    recalibrated,
    relative_change,
    relative_movement,
    rescaling,
)
from bplib.models import make_model
from bplib.profiles import get_profile
from bplib.results import CorruptFile

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
    with pytest.raises(ValueError, match="init"):
        build_family("resnet18_nobn", 1 / 32, init="zero")


# ------------------------------------------------------------ around the kernel (measures)
def test_synthetic_recalibrated_statistics_are_the_data_statistics_and_nothing_else_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    net = recalibrated(model, x, batch_size=64)  # one batch: exactly the batch statistics
    z = model[0](x).detach()
    bn, before = net[1], model[1]
    torch.testing.assert_close(bn.running_mean, z.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, z.var((0, 2, 3), unbiased=True))
    assert float(before.running_mean.abs().max()) == 0 and before.running_var.eq(1).all()
    assert not net.training and bn.momentum == before.momentum == 0.1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), net.parameters()))
    halves = recalibrated(model, x, batch_size=32)  # cumulative mean of the two batches
    m = (z[:32].mean((0, 2, 3)) + z[32:].mean((0, 2, 3))) / 2
    torch.testing.assert_close(halves[1].running_mean, m)
    assert not torch.equal(ntk(model, x[:2]), ntk(net, x[:2]))  # eval-mode kernel depends on it


def test_synthetic_relative_movement_known_value():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
    theta0 = parameters_of(model)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.0, 1.0]]))
    assert relative_movement(theta0, model) == pytest.approx(1 / 5)


def test_synthetic_linearized_is_the_taylor_model_with_a_constant_kernel():
    torch.manual_seed(0)
    net = make_model("mlp", widths=(12,), in_features=5, normalize=False)
    lin = Linearized(net)
    x = torch.randn(4, 5)
    torch.testing.assert_close(lin(x), net(x))  # equal at initialization
    assert sum(p.numel() for p in lin.parameters() if p.requires_grad) == 5 * 12 + 12 + 130
    phi0 = ntk(lin, x)
    torch.testing.assert_close(phi0, ntk(net, x))
    out0 = lin(x).detach()
    steps = [torch.randn_like(p) for p in lin.theta.values()]
    outs = []
    for c in (1.0, 2.0):  # linear in theta: doubling the step doubles the change
        with torch.no_grad():
            for p, d, key in zip(lin.theta.values(), steps, lin.theta):
                p.copy_(getattr(lin, "theta0__" + key) + c * d)
        outs.append(lin(x).detach() - out0)
    torch.testing.assert_close(outs[1], 2 * outs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ntk(lin, x), phi0)  # the kernel never changes
    assert not torch.allclose(lin(x), net(x))  # the net itself is not linear
    lin.train()
    assert lin.training and not lin.net.training


def test_linearized_trains_with_fit_on_real_cifar(cifar_small):
    from bplib.train import TrainConfig, fit

    torch.manual_seed(0)
    lin = Linearized(make_model("mlp", widths=(32,)))
    x, y = cifar_small.x_train[:128], cifar_small.y_train[:128]
    hist = fit(lin, x, y, TrainConfig(epochs=3, lr=0.01, batch_size=64), seed=0, progress=False)
    assert hist["train_loss"][-1] < hist["train_loss"][0]


def test_build_family_parameter_counts_follow_the_paper_formulas():
    from bplib.models import count_parameters

    w = 20
    assert count_parameters(build_family("mlp2", w)) == 3083 * w + 10
    assert count_parameters(build_family("mlp4", w)) == 2 * w**2 + 3085 * w + 10
    assert count_parameters(build_family("convnet", w)) == 270 * w**2 + 400 * w + 10
    assert count_parameters(build_family("wrn16", 1)) == 175626
    noskip = build_family("resnet18_noskip_nobn", 1 / 16, init="he_zero")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in noskip.modules())
    assert build_family("mlp2", 8, num_classes=100)(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


# ----------------------------------------------------------------------- records and keys
@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_jobs_keys_hold_the_configuration_only(profile):
    cfg = get_profile("ntk", profile)
    jobs = claim.jobs(cfg)
    n_data = {f: 1 + len(cfg.extra_datasets.get(f, [])) for f in cfg.widths}
    n_seeds = {f: min(len(cfg.seeds), cfg.seeds_per_family.get(f, 99)) for f in cfg.widths}
    assert len(jobs) == sum(len(ws) * n_data[f] * n_seeds[f] for f, ws in cfg.widths.items())
    if profile == "cpu":  # 4 seeds where the verdict is about the paper's "falls"
        assert n_seeds["wrn16"] >= 4 and n_seeds["resnet18"] >= 4 and min(n_seeds.values()) >= 2
    assert len({j.path(profile) for j in jobs}) == len(jobs)
    assert sum(j.params["trajectory"] for j in jobs) == 1
    for j in jobs:
        assert not {"device", "data_dir", "seed", "profile", "bn_stats", "min_train_acc"} & set(
            j.params
        )
        assert set(claim.PARAMS) <= set(j.params)
        assert ("init" in j.params) == (j.params["family"] in claim.NOBN_INIT)
        assert j.params["linearize"] == (j.params["family"] in cfg.linearize)
    with pytest.raises(ValueError, match="family"):
        claim.jobs(get_profile("ntk", profile, widths={"vgg": [1]}))
    with pytest.raises(ValueError, match="linearize"):
        claim.jobs(get_profile("ntk", profile, linearize=["resnet18"]))  # batch norm
    with pytest.raises(ValueError, match="seeds_per_family"):
        claim.jobs(get_profile("ntk", profile, seeds_per_family={"mlp2": 0}))
    with pytest.raises(ValueError, match="bn_stats"):
        claim.jobs(get_profile("ntk", profile, bn_stats="ema"))


def test_paper_profile_trains_resnets_with_the_final_papers_recipe_also_on_cifar100():
    cfg = get_profile("ntk", "paper")
    jobs = claim.jobs(cfg)
    resnet = [j.params for j in jobs if j.params["family"] == "resnet18_noskip"]
    assert {p["dataset"] for p in resnet} == {"cifar10", "cifar100"}
    assert all(p["milestones"] == [100, 150, 175, 190] and p["augment"] for p in resnet)
    assert all(p["gamma"] == 0.1 and p["epochs"] == 200 and p["lr"] == 0.01 for p in resnet)
    convnet = [j.params for j in jobs if j.params["family"] == "convnet"]
    assert all(p["milestones"] == [60, 120, 160] and not p["augment"] for p in convnet)
    assert {p["dataset"] for p in convnet} == {"cifar10"} and len(cfg.seeds) >= 2


def _tiny_cfg(**overrides):
    """The smoke profile shrunk to a 2-layer MLP (linearized, tracked) and a BN ResNet."""
    kw = dict(n_train=128, n_test=100, epochs=2, batch_size=64, n_images=2, explorer_images=1,
              widths={"mlp2": [8], "resnet18": [1 / 32]}, trajectory_family="mlp2",
              trajectory_width=8)  # fmt: skip
    return get_profile("ntk", "smoke", 0, **{**kw, **overrides})


def test_work_on_real_cifar_stores_record_kernels_control_and_diagnostics(cifar_small, records_dir):
    cfg = _tiny_cfg()
    ctx = runner.Context("smoke", device="cpu")
    mlp, resnet = runner.run(claim.jobs(cfg), claim.work, ctx, n_procs=1)
    res = mlp["result"]
    assert res["diverged"] is None and res["n_params"] == 3083 * 8 + 10 and not res["batchnorm"]
    for s in ("random", "official"):
        m = res["measures"][s]
        assert m["default"] == m["recalibrated"] and m["stats_only"] is None
        assert 0 < m["default"]["relative_change"] < 10 and -1 <= m["default"]["correlation"] <= 1
    assert [t["epoch"] for t in res["trajectory"]] == [0, 1, 2]
    assert res["trajectory"][-1]["correlation"] == pytest.approx(
        res["measures"]["random"]["recalibrated"]["correlation"]
    )
    assert 0 < res["movement"] < 1 and 0 <= res["test_acc"] <= 100
    lin = res["linearized"]
    assert 0 <= lin["test_acc"] <= 100 and 0 <= lin["agreement"] <= 1
    bn = resnet["result"]
    assert bn["batchnorm"] and bn["linearized"] is None and bn["trajectory"] == []
    m = bn["measures"]["random"]
    assert m["stats_only"]["correlation"] < 1 and m["default"] != m["recalibrated"]
    assert m["stats_only_trained"]["correlation"] < 1  # 4 steps: the running averages lag
    kernels = load_kernels(resnet)
    assert set(kernels) == {"phi0", "phi0_recalibrated", "phi1", "phi1_recalibrated"}
    assert kernels["phi0"].shape == (10, 10) and kernels["phi1"].dtype == np.float32
    again = runner.run(claim.jobs(cfg), claim.work, ctx, n_procs=1)
    assert again[0]["provenance"] == mlp["provenance"]  # read back, not recomputed
    assert not ctx.run_dir(claim.jobs(cfg)[0]).parent.exists()  # checkpoints removed
    rows = collect([mlp, resnet], cfg, "official")
    assert rows[0]["correlation"] == res["measures"]["official"]["recalibrated"]["correlation"]
    assert rows[0]["delta_rho"] is None and rows[1]["delta_rho"] is not None
    assert rows[0]["retest"] is None and "official" not in bn["retest"]  # main sample only
    retest = bn["retest"]["random"]["correlation"]  # two disjoint recalibrations of Phi_0
    assert -1 <= retest < 1 and collect([resnet], cfg)[0]["retest"] == retest


def test_trajectory_comes_from_the_checkpointed_history_after_a_resume(cifar_small, tmp_path):
    cfg = _tiny_cfg(widths={"mlp2": [8]}, linearize=[])
    job = claim.jobs(cfg)[0]
    ctx = runner.Context("smoke", device="cpu", root=tmp_path / "r", checkpoints=tmp_path / "c")
    first = claim.work(job, ctx)  # called directly: the final checkpoint stays
    assert (ctx.run_dir(job) / "checkpoint.pt").exists()
    resumed = claim.work(job, ctx)  # resumes after the last epoch: no training, history restored
    assert resumed["trajectory"] == first["trajectory"] and len(first["trajectory"]) == 3
    assert resumed["measures"] == first["measures"]


def test_deleting_a_corrupt_kernels_file_as_advised_recomputes_it(cifar_small, tmp_path):
    """Issue 27 item 3: a corrupt kernels file is named with "delete it to recompute"; after
    deleting it, the chapter's run cell recomputes it and its explorer view and summary work
    (before: the record was read back, the kernels never came back, and the view crashed)."""
    import matplotlib

    matplotlib.use("Agg")
    cfg = _tiny_cfg(widths={"mlp2": [8]}, linearize=[], samples=["random"])
    root = tmp_path / "r"
    ctx = runner.Context("smoke", device="cpu", root=root, checkpoints=tmp_path / "c", jobs=1)
    path = ctx.arrays(claim.jobs(cfg)[0])
    records = claims.run("ntk", cfg, ctx)
    path.write_bytes(b"not an npz")
    with pytest.raises(CorruptFile, match="delete it to recompute") as err:
        report.show_kernels(records, "mlp2", 0, root)
    err.value.path.unlink()
    records = claims.run("ntk", cfg, ctx)
    report.show_kernels(records, "mlp2", 0, root)
    assert load_kernels(records[0], root)["phi0"].shape == (20, 20)
    assert summarize(records, cfg).tables["networks"][1]


def test_committed_cpu_records_when_present_are_found_and_summarized():
    cfg = get_profile("ntk", "cpu")
    root = REPO / "data" / "records"
    records = runner.stored(claim.jobs(cfg), "cpu", root)
    if not all(records):
        pytest.skip("the cpu records of this design are not committed yet (see the chapter)")
    s = summarize(records, cfg)
    assert len(s.tables["networks"][1]) == len(records) and s.glue["ntk_n_seeds"] >= 2
    tracked = next(r for r in records if r["params"]["trajectory"])
    assert load_kernels(tracked, root)["phi0"].shape == (250, 250)


def test_benchmark_runs_on_a_tiny_net():
    cmd = [sys.executable, str(REPO / "benchmarks" / "ntk_benchmark.py"), "--family", "mlp2",
           "--width", "4", "--images", "2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "ratio official / ours" in out


def test_stored_kernels_above_the_float16_range_round_trip(tmp_path):
    """Wide nets' kernels exceed float16's 65,504: stored scaled, they come back within float16's
    relative precision; an old unscaled block's overflowed entries come back NaN, not inf."""
    from bplib.results import arrays_path, save_arrays

    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=g, dtype=torch.float64)
    phi = a @ a.T * 1e5  # entries up to ~1e7
    record = {"experiment": "ntk_width", "params": {"w": 1}, "profile": "smoke", "seed": 0}
    path = arrays_path("ntk_width", {"w": 1}, "smoke", 0, tmp_path)
    path.parent.mkdir(parents=True)
    p = {"n_images": 2, "trajectory": False, "explorer_images": 2}
    claim._save_kernels(path, p, {"default": {"r": phi}}, {"default": {"r": 2 * phi}}, "r", False)
    back = load_kernels(record, tmp_path)
    assert np.allclose(back["phi0"], phi.numpy(), rtol=2e-3, atol=2e-3 * phi.abs().max().item())
    assert np.allclose(back["phi1"], 2 * phi.numpy(), rtol=2e-3, atol=4e-3 * phi.abs().max().item())
    with np.errstate(over="ignore"):  # as records were stored before the scale
        save_arrays(path, phi0=phi.numpy().astype(np.float16))
    old = load_kernels(record, tmp_path)["phi0"]
    assert np.isnan(old).any() and not np.isinf(old).any()


def test_a_diverged_run_is_stored_once_not_retrained_on_every_run(
    cifar_small, tmp_path, monkeypatch
):
    """A diverged run has no kernels to keep, but its job declares arrays: without an (empty)
    arrays file the runner took it for lost and retrained it on every run and every build."""
    from bplib.train import TrainingDiverged

    calls = []

    def diverge(*args, **kwargs):
        calls.append(1)
        raise TrainingDiverged("loss is nan at epoch 1")

    monkeypatch.setattr(claim, "fit", diverge)
    cfg = _tiny_cfg(widths={"mlp2": [8]}, linearize=[], samples=["random"])
    ctx = runner.Context("smoke", device="cpu", root=tmp_path / "r", checkpoints=tmp_path / "c",
                         jobs=1)  # fmt: skip
    first = claims.run("ntk", cfg, ctx)
    again = claims.run("ntk", cfg, ctx)
    assert first[0]["result"]["diverged"] and again == first and len(calls) == 1
