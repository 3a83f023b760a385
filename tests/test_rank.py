import math

import pytest
import torch
from torch import nn

from bplib import REPO_ROOT, claims, paper, runner
from bplib.claims import rank
from bplib.claims.rank import report as rr
from bplib.measures.rank import (
    RankProjection,
    conjugate_pairs,
    conv_input_sizes,
    conv_singular_values,
    effective_rank,
    layer_spectra,
    named_block_convs,
    project_kernel,
    quantiles,
)
from bplib.models import make_model
from bplib.profiles import get_profile
from bplib.stats import detectable

TEXT_GLUE = (
    "rank_status",
    "rank_verdict",
    "rank_ours",
    "rank_provenance",
)  # the verdict box's text


def unrolled_circular_conv(weight: torch.Tensor, n: int) -> torch.Tensor:
    """The (c_out n^2) x (c_in n^2) matrix of a stride-1 circular conv, column by column."""
    c_out, c_in, k, _ = weight.shape
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, padding_mode="circular", bias=False)
    conv.weight.data = weight.double()
    conv.double()
    basis = torch.eye(c_in * n * n, dtype=torch.float64).view(-1, c_in, n, n)
    with torch.no_grad():
        return conv(basis).reshape(c_in * n * n, -1).T


@pytest.mark.parametrize("c_out,c_in", [(2, 3), (3, 2), (4, 4), (1, 5)])
@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_synthetic_fft_singular_values_equal_unrolled_operator(c_out, c_in, n):
    torch.manual_seed(n * 10 + c_out)
    w = torch.randn(c_out, c_in, 3, 3)
    dense = torch.linalg.svdvals(unrolled_circular_conv(w, n))
    fft = conv_singular_values(w, n)
    r = min(c_out, c_in) * n * n
    assert len(fft) == r
    torch.testing.assert_close(fft, dense[:r], rtol=1e-9, atol=1e-9)


def test_synthetic_effective_rank_bounds():
    assert effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_rank([2.0] * 16) == pytest.approx(4.0)
    assert effective_rank([0.0, 0.0]) == 0.0


def test_synthetic_rankmin_lowers_and_rankmax_raises_effective_rank():
    torch.manual_seed(0)
    w = torch.randn(8, 8, 3, 3) * 0.15  # singular values 0 .. 2.6: a quarter < 0.5, > 1.5
    n = 8
    base = effective_rank(conv_singular_values(w, n))
    s = conv_singular_values(w, n)
    assert s.max() > 1.5 and s.min() < 0.5  # both projections have something to do
    low = project_kernel(w, n, "rankmin", 0.5)
    high = project_kernel(w, n, "rankmax", 1.5)
    assert low.shape == high.shape == w.shape == (8, 8, 3, 3)
    assert effective_rank(conv_singular_values(low, n)) < base - 0.2
    assert effective_rank(conv_singular_values(high, n)) > base + 0.2
    # No edit (threshold 0 / ceiling above every singular value) gives the kernel back.
    torch.testing.assert_close(project_kernel(w, n, "rankmin", 0.0), w)
    torch.testing.assert_close(project_kernel(w, n, "rankmax", 1e6), w)
    with pytest.raises(ValueError, match="op"):
        project_kernel(w, n, "rankmid", 1.0)


def test_input_sizes_from_hooks_and_spectra_of_resnet18():
    torch.manual_seed(0)
    model = make_model("resnet18", width=1 / 16, skip=False)
    convs = [c for _, c in named_block_convs(model)]
    assert len(convs) == 16
    sizes = conv_input_sizes(model, convs)
    assert sizes == [32] * 5 + [16] * 4 + [8] * 4 + [4] * 3
    layers = layer_spectra(model, num_quantiles=50)
    assert layers[0]["name"].endswith("layer1.0.conv1") and layers[4]["stride"] == 2
    assert all(len(d["spectrum_quantiles"]) == 50 for d in layers)
    assert all(0 < d["effective_rank"] <= d["max_rank"] ** 0.5 for d in layers)


def test_rank_projection_hook_changes_only_block_convs_on_schedule():
    torch.manual_seed(0)
    model = make_model("resnet18", width=1 / 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hook = RankProjection("rankmin", 0.5, epochs=[2])
    assert hook(model, 1) is None
    out = hook(model, 2)
    assert out["epoch"] == 2 and len(out["eff_rank_after"]) == 16
    assert all(a < b for a, b in zip(out["eff_rank_after"], out["eff_rank_before"]))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{n}.weight" for n, _ in named_block_convs(model)}


def test_quantiles_keep_ends():
    s = torch.linspace(10, 0, 1001)
    q = quantiles(s, 200)
    assert len(q) == 200 and q[0] == 10 and q[-1] == 0
    assert quantiles(s[:5], 200) == s[:5].tolist()


def test_layer_spectra_rounds_to_significant_digits():
    torch.manual_seed(0)
    model = make_model("resnet18", width=1 / 16)
    full, small = layer_spectra(model, 30), layer_spectra(model, 30, digits=4)
    assert [d["effective_rank"] for d in full] == [d["effective_rank"] for d in small]
    for a, b in zip(full, small):
        assert b["spectrum_quantiles"] == [float(f"{v:.4g}") for v in a["spectrum_quantiles"]]


# --------------------------------------------------------------------- jobs and keys
def test_jobs_bases_first_and_finetune_keys_follow_their_base():
    """Bases are jobs of their own; a job that loads a base's weights (a fine-tuning job, or
    the warm-started adversarial base) holds that base's params, so a change of a base changes
    every key built on it, and a fine-tuning change no base key."""
    cfg = get_profile("rank", "cpu", adversarial_init="natural")
    jobs = rank.jobs(cfg)
    bases = [j for j in jobs if j.params["phase"] == "base"]
    fts = [j for j in jobs if j.params["phase"] == "finetune"]
    assert jobs[: len(bases)] == bases and len(bases) == 2
    n_arms = sum(len(rr.arms(cfg, k)) for k in rr.KINDS)
    assert len(fts) == n_arms * len(cfg.seeds)
    assert all(j.params["base"] in [b.params for b in bases] for j in fts)
    nat, adv = bases
    assert adv.params["init"] == nat.params and "train_eps" in adv.params
    assert "train_eps" not in nat.params and "eval_eps" not in nat.params
    keys = {j.path("cpu").name for j in jobs}
    assert len(keys) == len(jobs)
    epochs = cfg.base_epochs
    longer = {"natural": epochs["natural"] + 1, "adversarial": epochs["adversarial"]}
    longer = get_profile("rank", "cpu", adversarial_init="natural", base_epochs=longer)
    assert not {j.path("cpu").name for j in rank.jobs(longer)} & keys  # every key changed
    adv_longer = {"natural": epochs["natural"], "adversarial": epochs["adversarial"] + 1}
    adv_longer = get_profile("rank", "cpu", adversarial_init="natural", base_epochs=adv_longer)
    same = {j.path("cpu").name for j in rank.jobs(adv_longer)} & keys
    assert same == {
        j.path("cpu").name for j in jobs if rr.where({"params": j.params})[0] == "natural"
    }
    ft_longer = rank.jobs(get_profile("rank", "cpu", epochs=4))
    assert [j.path("cpu").name for j in ft_longer[:2]] == [b.path("cpu").name for b in bases]
    assert all(rank.cost(j) > 0 for j in jobs)
    scratch = rank.base_jobs(get_profile("rank", "cpu", adversarial_init="scratch"))
    assert "init" not in scratch[1].params


def test_waves_run_every_job_after_the_base_it_loads():
    cfg = get_profile("rank", "cpu", adversarial_init="natural")
    nat, adv = rank.base_jobs(cfg)
    w1, w2, w3 = rank.waves(rank.jobs(cfg))
    assert w1 == [nat] and w2[0] == adv
    assert all(rank.needs(j) == nat.params for j in w2) and all(
        rank.needs(j) == adv.params for j in w3
    )
    assert len(w1 + w2 + w3) == len(rank.jobs(cfg))
    scratch = rank.waves(rank.jobs(get_profile("rank", "cpu", adversarial_init="scratch")))
    assert [len(w) for w in scratch] == [2, len(rank.jobs(cfg)) - 2]
    with pytest.raises(ValueError, match="adversarial_init='natural' needs a natural base"):
        rank.jobs(get_profile("rank", "cpu", bases={"adversarial": ["cifar10"]}))


def test_bad_arm_is_a_clear_error():
    cfg = get_profile("rank", "smoke", arms={"natural": [["rankmid", 1.0]], "adversarial": []})
    with pytest.raises(ValueError, match="arms: op must be one of"):
        rank.jobs(cfg)


# --------------------------------------------------------------------- synthetic records
def _record(kind, arm, seed, acc, erank, phase="finetune", rob=None):
    """A record with ``acc`` of 100 test images correct (held-out: none), robust bits with
    ``rob`` correct (default ``acc``), and 3 layers of effective rank ``erank``."""
    base = {"phase": "base", "kind": kind, "dataset": "cifar10", "skip": True, "epochs": 2}
    layer = {"effective_rank": erank, "spectrum_quantiles": [2.0, 1.0], "name": "c", "n": 4}
    bits = lambda k: "1" * k + "0" * (100 - k)  # noqa: E731
    rob = acc if rob is None else rob
    result = {
        "train_acc": 90.0,
        "test_correct": bits(acc),
        "holdout_correct": "",
        "robust_correct": {"1/255": bits(rob), "8/255": bits(rob // 2)},
        "spectra": [layer] * 3,
        "n_train": 100,
        "history": {"train_acc": [80.0]},
    }
    if phase == "base":
        params = {**base, "seed": 0}
        result["spectra_init"] = [{**layer, "effective_rank": 2 * erank}] * 3
    else:
        params = {"phase": "finetune", "base": base, "arm": arm[0], "threshold": arm[1]}
    return {"params": {**params, "seed": seed}, "seed": seed, "result": result,
            "provenance": {"wall_time_s": 120.0}}  # fmt: skip


RATIO = {"none": 1.0, "rankmin": 0.8, "rankmax": 1.2}


def _records(cfg, acc, ratio=RATIO):
    """Base and fine-tuning records of ``cfg``: ``acc(kind, arm, seed)`` test images of 100."""
    out = [_record(k, rr.NONE, 0, 70, 4.0, phase="base") for k in rr.KINDS]
    for kind in rr.KINDS:
        for arm in rr.arms(cfg, kind):
            for seed in cfg.seeds:
                out.append(_record(kind, arm, seed, acc(kind, arm, seed), 4.0 * ratio[arm[0]]))
    return out


def test_synthetic_equal_arms_agree_with_the_paper():
    cfg = get_profile("rank", "cpu")
    s = rank.summarize(_records(cfg, lambda k, a, s: 80 if k == "natural" else 60), cfg)
    assert s.verdict.startswith("Agrees with the paper: in all 10 comparisons the 3-seed")
    assert set(s.tables) == {"bases", "ResNet-18, cifar10", "verdict"}
    headers, rows = s.tables["ResNet-18, cifar10"]
    assert headers == rr.TABLE4_HEADERS and len(rows[0]) == len(headers) == 11
    assert [r[0] for r in rows] == ["natural", "RankMin 0.5", "RankMin 1", "RankMax 1.5",
                                    "adversarial", "RankMinAdv 0.5", "RankMaxAdv 1.5"]  # fmt: skip
    assert rows[1][4] == f"{paper.TABLE4['RankMin'][1]:.2f}" and rows[2][4] == "n/a"
    assert rows[0][3].startswith("80.00 ± 0.00 (n=3)") and rows[1][-1].startswith("0.800")
    assert all(r[-1] == "benefit ≥ 1 excluded" for r in s.tables["verdict"][1])
    assert s.ours.startswith("ResNet-18 RankMin 0.5 − natural, clean +0.00 [+0.00, +0.00] (n=3")
    g = s.glue
    assert g["rank_ratio_nat_rankmin50"] == pytest.approx(0.8)
    assert g["rank_init_ratio"] == pytest.approx(0.5) and g["rank_adv_ratio"] == pytest.approx(1)
    assert g["rank_d_adv_rankmin50_rob8"] == 0 and g["rank_nat_test"] == 80
    assert g["rank_paper_rankmax_drop1"] == pytest.approx(9.97)
    assert g["rank_paper_rankmax_minus_nat_rob1"] == pytest.approx(-9.97)
    assert all(isinstance(v, float) for k, v in g.items() if k not in TEXT_GLUE)
    assert (
        g["rank_status"].startswith("Agrees with the paper: in all") and "." not in g["rank_status"]
    )
    assert g["rank_verdict"] == s.verdict and g["rank_ours"] == s.ours
    assert "RankMax − natural = -9.97 points; ours: RankMax 1.5 − natural = " in s.verdict


def test_synthetic_consistent_benefit_supports_the_belief():
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, seed):  # RankMin 0.5 on the natural base: +2, +3, +4 points
        bonus = (2 + seed) if (kind, arm) == ("natural", ("rankmin", 0.5)) else 0
        return (80 if kind == "natural" else 60) + bonus

    s = rank.summarize(_records(cfg, acc), cfg)
    assert s.verdict.startswith("Partly supports the belief: lower rank was significantly better")
    assert "RankMin 0.5 − natural, clean" in s.verdict
    row = s.tables["verdict"][1][0]
    assert row[3] == "+2.0 +3.0 +4.0" and row[-1] == "lower rank better"


def test_synthetic_rankmax_harm_and_rankmin_harm_are_both_reported():
    """The pilot's pattern: RankMax costs accuracy (supports the belief), RankMin 1 costs
    accuracy too (against it), RankMin 0.5 changes nothing (benefit excluded)."""
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, seed):
        loss = {"rankmax": 5 + seed, "rankmin": (2 + seed) * (arm[1] == 1.0)}.get(arm[0], 0)
        return (80 if kind == "natural" else 60) - loss

    text = rank.summarize(_records(cfg, acc), cfg).verdict
    assert text.startswith("Partly supports the belief: lower rank was significantly better in 4")
    assert "All of them are RankMax arms: raising the rank hurt" in text
    assert "excluded in 4 (RankMin 0.5 − natural, clean;" in text
    assert "significantly worse in 2 of 10 comparisons (RankMin 1 − natural, clean;" in text


def test_synthetic_noisy_differences_are_not_decided_and_say_what_was_detectable():
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, seed):  # every projection arm: +3, -2, +4 points
        return (80 if kind == "natural" else 60) + (0 if arm == rr.NONE else (3, -2, 4)[seed])

    stats = rr.comparisons(_records(cfg, acc), cfg)
    mde = detectable(math.sqrt(31 / 3), 3)  # the sd of (3, -2, 4) over 3 seeds, exact power
    assert stats[0]["diffs"] == [3, -2, 4] and stats[0]["mde"] == pytest.approx(mde)
    text = rr.verdict_text(stats, cfg.margin)
    assert text.startswith("Not decided at this scale for 10 of 10 comparisons")
    assert f"about {mde:.1f} points (80% power" in text


def test_synthetic_gates_and_unmoved_rank_are_not_counted():
    cfg = get_profile("rank", "cpu")
    ratio = {**RATIO, "rankmax": 1.01}  # RankMax barely moved the rank
    recs = _records(cfg, lambda k, a, s: 50 if k == "natural" else 60, ratio)  # natural < gate 60
    stats = rr.comparisons(recs, cfg)
    assert {s["status"] for s in stats if s["kind"] == "natural"} == {"base below its gate"}
    adv = {s["arm"]: s["status"] for s in stats if s["kind"] == "adversarial"}
    assert adv == {"RankMinAdv 0.5": "benefit ≥ 1 excluded", "RankMaxAdv 1.5": "rank moved < 5%"}
    text = rr.verdict_text(stats, cfg.margin)
    assert text.startswith("Not testable at this scale where a base failed its gate (natural base:")
    assert "Agrees with the paper: in all 2 comparisons" in text


def test_robust_bits_cascade_never_marks_a_fooled_image_robust(cifar_small):
    torch.manual_seed(0)
    model = make_model("resnet18", width=1 / 16).eval()
    x, y = cifar_small.x_test[:40], cifar_small.y_test[:40]
    clean = torch.ones(40, dtype=torch.bool)  # pretend all are right: attacks decide
    p = {"n_robust": 30, "eval_eps": [8 / 255, 1 / 255], "eval_steps": 3, "eval_alpha_frac": 0.25}
    bits = rank.robust_bits(model, x, y, clean, p)
    assert list(bits) == ["1/255", "8/255"] and all(len(b) == 30 for b in bits.values())
    wrong = rank.correct(model, x[:30], y[:30])
    assert all(b == "0" for b, w in zip(bits["1/255"], wrong) if not w)
    assert all(b8 <= b1 for b1, b8 in zip(bits["1/255"], bits["8/255"]))


def test_synthetic_run_trains_bases_then_finetunes_from_their_weights(monkeypatch, tmp_path):
    """Synthetic 96-image data, smoke sizes: the runner trains the bases, stores their weights
    beside their records, fine-tunes every arm from them, and retrains a base whose weights
    file is gone when a fine-tuning record is missing."""
    from bplib.data import CifarData

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    fake = CifarData(x[:64], y[:64], x[64:], y[64:], [str(i) for i in range(10)], "synthetic", "t")
    monkeypatch.setattr(rank.data, "load_cifar", lambda name, data_dir=None: fake)
    monkeypatch.setattr(runner, "data_identities", lambda jobs, ctx: {})
    cfg = get_profile("rank", "smoke", n_holdout=8, n_test=16, n_robust=8, seeds=[0])
    cfg.base_images = cfg.finetune_images = {"natural": 32, "adversarial": 16}
    cfg.arms = {"natural": [["rankmin", 0.5]], "adversarial": []}
    ctx = runner.Context("smoke", "cpu", root=tmp_path / "r", checkpoints=tmp_path / "c", jobs=1)
    records = claims.run("rank", cfg, ctx)
    assert [r["params"]["phase"] for r in records] == [
        "base",
        "base",
        "finetune",
        "finetune",
        "finetune",
    ]
    base = records[0]
    assert base["result"]["spectra_init"] and "robust_correct" not in base["result"]
    weights = ctx.arrays(rank.base_jobs(cfg)[0])
    assert weights.exists()
    ft = records[3]["result"]
    assert ft["n_train"] == 32 and ft["n_holdout"] == 8 and len(ft["test_correct"]) == 16
    assert set(ft["robust_correct"]) == {"1/255", "8/255"} and ft["n_robust"] == 8
    assert ft["history"]["hooks"][0]["op"] == "rankmin" and len(ft["spectra"]) == 16
    weights.unlink()
    rank.jobs(cfg)[3].path("smoke", ctx.root).unlink()  # one fine-tuning record lost
    assert claims.run("rank", cfg, ctx)[3]["result"]["test_correct"] == ft["test_correct"]
    assert weights.exists()


def test_summarize_committed_cpu_records():
    """The committed cpu records (when complete) give the results page's row and the glue."""
    cfg = get_profile("rank", "cpu")
    records = runner.stored(rank.jobs(cfg), "cpu", REPO_ROOT / "data" / "records")
    if any(r is None for r in records):
        pytest.skip("committed cpu rank records are incomplete (the lead regenerates them)")
    s = rank.summarize(records, cfg)
    numbers = [v for k, v in s.glue.items() if k not in TEXT_GLUE]
    assert s.ours.count("[") == 2 and all(math.isfinite(v) for v in numbers)
    # the paper's RankMax - natural beside ours, same contrast and sign (contract item 15)
    g = s.glue
    assert g["rank_rankmax150_minus_nat_rob1"] == -g["rank_d_nat_rankmax150_rob1"]
    assert g["rank_rankmax150_minus_nat_rob1_lo"] == -g["rank_d_nat_rankmax150_rob1_hi"]
    assert g["rank_paper_rankmax_minus_nat_rob1"] < 0 and g["rank_status"] in s.verdict
    assert len(s.tables["verdict"][1]) == 10
    assert rank.paper_headline().startswith("Table 4, ResNet-18: RankMin − natural, test -0.22;")


def _project_every_frequency(w, n, op, threshold):
    """The projection with an SVD at all n x n frequencies: the reference for the paired one."""
    freq = torch.fft.fft2(w.double(), s=(n, n)).permute(2, 3, 0, 1)
    u, s, vh = torch.linalg.svd(freq, full_matrices=False)
    s = torch.where(s < threshold, 0.0, s) if op == "rankmin" else s.clamp(max=threshold)
    edited = (u * s.to(u.dtype).unsqueeze(-2)) @ vh
    full = torch.fft.ifft2(edited.permute(2, 3, 0, 1), s=(n, n)).real
    return full[..., :3, :3].to(w.dtype)


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_one_frequency_per_conjugate_pair_gives_every_frequencys_projection(n):
    reps, source, mirrored = conjugate_pairs(n)
    assert len(reps) == (n * n + (4 if n % 2 == 0 else 1)) // 2  # self-paired ones counted once
    assert torch.equal(reps[source][~mirrored], torch.arange(n * n)[~mirrored])
    torch.manual_seed(n)
    w = torch.randn(6, 4, 3, 3) * 0.2
    for op, threshold in (("rankmin", 0.5), ("rankmax", 1.0)):
        torch.testing.assert_close(project_kernel(w, n, op, threshold),
                                   _project_every_frequency(w, n, op, threshold))  # fmt: skip
