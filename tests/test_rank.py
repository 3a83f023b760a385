import math

import pytest
import torch
from torch import nn

from bplib import REPO_ROOT, claims, paper, runner
from bplib.claims import rank
from bplib.claims.rank import glue as rg
from bplib.claims.rank import report as rr
from bplib.measures.rank import (
    RankProjection,
    conjugate_pairs,
    control_kernel,
    conv_input_sizes,
    conv_singular_values,
    effective_rank,
    layer_spectra,
    named_block_convs,
    project_kernel,
    quantiles,
    rank_neutral_direction,
)
from bplib.models import make_model
from bplib.profiles import get_profile
from bplib.stats import detectable, holm

TEXT_GLUE = (
    "rank_status",
    "rank_verdict",
    "rank_ours",
    "rank_provenance",
)  # the verdict box's text
FLOAT_GLUE = ("rank_bases", "rank_ft_seeds", "rank_margin", "rank_alpha", "rank_comparisons",
              "rank_paper_rankmax_minus_nat_rob1", "rank_paper_rankmin_minus_nat_test")  # fmt: skip


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


@pytest.mark.parametrize("op,threshold", [("rankmin", 0.5), ("rankmax", 1.5)])
def test_control_changes_the_kernel_as_much_as_its_projection_but_not_the_rank(op, threshold):
    """The damage-matched control: the same Frobenius change of the kernel as the projection,
    and a change of effective rank far smaller than the projection's."""
    torch.manual_seed(0)
    w, n = torch.randn(8, 8, 3, 3) * 0.15, 8
    proj = project_kernel(w, n, op, threshold)
    ctrl = control_kernel(w, n, f"control_{op}", threshold, torch.Generator().manual_seed(0))
    assert ctrl.shape == w.shape and ctrl.dtype == w.dtype
    assert (ctrl - w).norm().item() == pytest.approx((proj - w).norm().item(), rel=1e-5)
    erank = lambda k: effective_rank(conv_singular_values(k, n))  # noqa: E731
    moved = abs(erank(proj) - erank(w))
    assert moved > 0.2 and abs(erank(ctrl) - erank(w)) < 0.05 * moved
    # a projection that changes nothing gives a control that changes nothing
    same = control_kernel(w, n, "control_rankmin", 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, w)
    with pytest.raises(ValueError, match="op"):
        control_kernel(w, n, "rankmin", 0.5, torch.Generator())


def test_rank_neutral_direction_moves_no_singular_value_to_first_order():
    """With n = k nothing is cropped, and the effective rank along the direction changes as
    t^2: doubling the step multiplies the change by 4 (a first-order change would double it)."""
    torch.manual_seed(1)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    d = rank_neutral_direction(w, 3, torch.Generator().manual_seed(1))
    d = d / d.norm()
    erank = lambda k: effective_rank(conv_singular_values(k, 3))  # noqa: E731
    e1, e2 = (erank(w + t * d) - erank(w) for t in (1e-3, 2e-3))
    assert abs(e1) < 1e-8 and e2 / e1 == pytest.approx(4.0, rel=0.05)
    s1 = conv_singular_values(w + 1e-3 * d, 3) - conv_singular_values(w, 3)
    assert s1.abs().max() < 1e-5  # 1e-3 step, no singular value moved by more than its square


def test_control_hook_records_the_matched_change():
    torch.manual_seed(0)
    model = make_model("resnet18", width=1 / 16)
    proj = RankProjection("rankmax", 1.5, epochs=[1])(model, 1)
    torch.manual_seed(0)
    model = make_model("resnet18", width=1 / 16)
    ctrl = RankProjection("control_rankmax", 1.5, epochs=[1], seed=3)(model, 1)
    assert ctrl["op"] == "control_rankmax" and len(ctrl["rel_change"]) == 16
    assert ctrl["rel_change"] == pytest.approx(proj["rel_change"], rel=1e-4)
    with pytest.raises(ValueError, match="op"):
        RankProjection("rankmid", 1.0, epochs=[1])


# --------------------------------------------------------------------- jobs and keys
def test_jobs_bases_first_and_finetune_keys_follow_their_base():
    """One base per kind and seed; a job that loads a base's weights (a fine-tuning job, or
    the warm-started adversarial base) holds that base's params and seed, so a change of a base
    changes every key built on it, and a fine-tuning change no base key."""
    cfg = get_profile("rank", "cpu", adversarial_init="natural")
    jobs = rank.jobs(cfg)
    bases = [j for j in jobs if j.params["phase"] == "base"]
    fts = [j for j in jobs if j.params["phase"] == "finetune"]
    assert jobs[: len(bases)] == bases and len(bases) == 2 * len(cfg.seeds) >= 6
    assert len(cfg.seeds) >= 3 and cfg.finetune_seeds  # issue 24: >= 3 bases per kind
    n_arms = sum(len(rr.arms(cfg, k)) for k in rr.KINDS)
    assert len(fts) == n_arms * len(cfg.seeds) * len(cfg.finetune_seeds)
    assert all(rank.needs(j) in bases for j in fts)
    nat = [b for b in bases if b.params["kind"] == "natural"]
    adv = [b for b in bases if b.params["kind"] == "adversarial"]
    assert [rank.needs(a) for a in adv] == nat and [b.seed for b in nat] == cfg.seeds
    assert all(a.params["init"] == nat[0].params and "train_eps" in a.params for a in adv)
    assert "train_eps" not in nat[0].params and "eval_eps" not in nat[0].params
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
    ft_longer = rank.jobs(get_profile("rank", "cpu", epochs=5))
    n = len(bases)
    assert [j.path("cpu").name for j in ft_longer[:n]] == [b.path("cpu").name for b in bases]
    assert all(rank.cost(j) > 0 for j in jobs)
    scratch = rank.base_jobs(get_profile("rank", "cpu", adversarial_init="scratch"))
    assert all("init" not in b.params for b in scratch)


@pytest.mark.parametrize("profile", ["paper", "gpu"])
def test_dealt_arms_cover_every_op_once_and_every_base_with_none(profile):
    """The dry run's ``arm_bases = "dealt"``: each projection op on exactly one base, every base
    fine-tuned without projection, and the keys of the jobs it keeps those of the full design."""
    full = rank.finetune_jobs(get_profile("rank", profile, dryrun=True, arm_bases="all"))
    dealt = rank.finetune_jobs(get_profile("rank", profile, dryrun=True))
    ops = {op for k in rr.KINDS for op, _ in get_profile("rank", profile).arms[k]}
    projected = [j.params["arm"] for j in dealt if j.params["arm"] != "none"]
    assert sorted(projected) == sorted(ops) and len(projected) == len(ops)
    bases = {
        j.path(profile).name for j in rank.base_jobs(get_profile("rank", profile, dryrun=True))
    }
    none = {rank.needs(j).path(profile).name for j in dealt if j.params["arm"] == "none"}
    assert none == bases and set(dealt) < set(full)
    with pytest.raises(ValueError, match="arm_bases"):
        rank.finetune_jobs(get_profile("rank", profile, dryrun=True, arm_bases="some"))


def test_waves_run_every_job_after_the_base_it_loads():
    cfg = get_profile("rank", "cpu", adversarial_init="natural")
    bases = rank.base_jobs(cfg)
    nat, adv = bases[: len(cfg.seeds)], bases[len(cfg.seeds) :]
    w1, w2, w3 = rank.waves(rank.jobs(cfg))
    assert w1 == nat and w2[: len(adv)] == adv
    assert all(rank.needs(j) in nat for j in w2) and all(rank.needs(j) in adv for j in w3)
    assert len(w1 + w2 + w3) == len(rank.jobs(cfg))
    scratch = rank.waves(rank.jobs(get_profile("rank", "cpu", adversarial_init="scratch")))
    assert [len(w) for w in scratch] == [len(bases), len(rank.jobs(cfg)) - len(bases)]
    with pytest.raises(ValueError, match="needs a base that is not among the jobs"):
        rank.waves(rank.jobs(cfg)[1:])  # natural base 0 missing
    with pytest.raises(ValueError, match="adversarial_init='natural' needs a natural base"):
        rank.jobs(get_profile("rank", "cpu", bases={"adversarial": ["cifar10"]}))


def test_bad_arm_is_a_clear_error():
    cfg = get_profile("rank", "smoke", arms={"natural": [["rankmid", 1.0]], "adversarial": []})
    with pytest.raises(ValueError, match="arms: op must be one of"):
        rank.jobs(cfg)


# --------------------------------------------------------------------- synthetic records
def _record(kind, arm, base, acc, erank, phase="finetune", rob=None, change=0.1):
    """A record of base ``base`` with ``acc`` of 100 test images correct (held-out: none),
    robust bits with ``rob`` correct (default ``acc``), 3 layers of effective rank ``erank``."""
    params = {"phase": "base", "kind": kind, "dataset": "cifar10", "skip": True, "epochs": 2}
    layer = {"effective_rank": erank, "spectrum_quantiles": [2.0, 1.0], "name": "c", "n": 4}
    bits = lambda k: "1" * k + "0" * (100 - k)  # noqa: E731
    rob = acc if rob is None else rob
    hooks = [None] if arm == rr.NONE else [{"rel_change": [change] * 3}]
    result = {
        "train_acc": 90.0,
        "test_correct": bits(acc),
        "holdout_correct": "",
        "robust_correct": {"1/255": bits(rob), "8/255": bits(rob // 2)},
        "spectra": [layer] * 3,
        "n_train": 100,
        "history": {"train_acc": [80.0], "hooks": hooks},
    }
    if phase == "base":
        result["spectra_init"] = [{**layer, "effective_rank": 2 * erank}] * 3
        return {"params": params, "seed": base, "result": result,
                "provenance": {"wall_time_s": 120.0}}  # fmt: skip
    params = {"phase": "finetune", "base": params, "base_seed": base, "arm": arm[0],
              "threshold": arm[1]}  # fmt: skip
    return {"params": params, "seed": 0, "result": result, "provenance": {"wall_time_s": 60.0}}


RATIO = {"none": 1.0, "rankmin": 0.8, "rankmax": 1.2, "control_rankmin": 1.0,
         "control_rankmax": 1.0}  # fmt: skip


def _records(cfg, acc, ratio=RATIO):
    """Base and fine-tuning records of ``cfg``: ``acc(kind, arm, base)`` test images of 100."""
    out = [_record(k, rr.NONE, b, 70, 4.0, phase="base") for k in rr.KINDS for b in cfg.seeds]
    for kind in rr.KINDS:
        for arm in rr.arms(cfg, kind):
            for b in cfg.seeds:
                out.append(_record(kind, arm, b, acc(kind, arm, b), 4.0 * ratio[arm[0]]))
    return out


def _base(kind):
    return 80 if kind == "natural" else 60


def test_synthetic_equal_arms_agree_with_the_paper():
    cfg = get_profile("rank", "cpu")
    s = rank.summarize(_records(cfg, lambda k, a, b: _base(k)), cfg)
    assert s.verdict.startswith("Agrees with the paper: lowering rank did not help (in all 4")
    assert set(s.tables) == {"bases", "ResNet-18, cifar10", "verdict"}
    headers, rows = s.tables["ResNet-18, cifar10"]
    assert headers == rr.TABLE4_HEADERS and len(rows[0]) == len(headers) == 12
    assert [r[0] for r in rows] == [
        "natural", "RankMin 0.5", "RankMax 1.5", "Matched RankMin 0.5", "Matched RankMax 1.5",
        "adversarial", "RankMinAdv 0.5", "RankMaxAdv 1.5", "Matched RankMinAdv 0.5",
        "Matched RankMaxAdv 1.5"]  # fmt: skip
    assert rows[1][4] == f"{paper.TABLE4['RankMin'][1]:.2f}" and rows[3][4] == "n/a"
    assert rows[0][3].startswith("80.00 ± 0.00 (n=4)") and rows[1][-2].startswith("0.800")
    assert rows[0][-1] == "—" and rows[1][-1] == "0.100"
    assert len(s.tables["bases"][1]) == 8
    # a control moves no rank: its comparisons with the projection still count (ratio 0.8)
    verdict = s.tables["verdict"][1]
    assert len(verdict) == 16 and all(r[-1] == "gain ≥ 1 excluded" for r in verdict)
    assert s.ours.startswith(
        "ResNet-18 RankMin 0.5 − natural, clean (test + held-out images; "
        "the paper: test) +0.00 [+0.00, +0.00] (n=4"
    )
    g = s.glue
    assert g["rank_ratio_nat_rankmin50"] == "0.800" and g["rank_ratio_nat_ctrlmin50"] == "1.000"
    assert g["rank_change_nat_ctrlmax150"] == "0.100"
    assert g["rank_init_ratio"] == "0.500" and g["rank_adv_ratio"] == "1.000"
    assert g["rank_d_adv_rankmin50_none_rob8"] == "+0.00" and g["rank_nat_test"] == "80.0"
    assert g["rank_d_nat_rankmin50_none_clean_p"] == "n/a (no spread)"  # equal differences
    assert g["rank_paper_rankmax_minus_nat_rob1"] == pytest.approx(-9.97)
    assert g["rank_bases"] == 4 and g["rank_comparisons"] == 16
    assert g["rank_network"] == "ResNet-18 at width 1/8" and g["rank_left_out"] == "none"
    assert all(isinstance(v, float) for k, v in g.items() if k in FLOAT_GLUE)
    assert not [k for k, v in g.items() if "nan" in str(v)]
    assert g["rank_status"].startswith("Agrees with the paper") and "." not in g["rank_status"]
    assert g["rank_verdict"] == s.verdict and g["rank_ours"] == s.ours
    assert "RankMax − natural = -9.97 points; ours: RankMax 1.5 − natural = " in s.verdict


def test_synthetic_consistent_benefit_beyond_the_control_says_lower_rank_helped():
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, base):  # RankMin 0.5 on the natural bases: +4, +5, +6, +7 points
        return _base(kind) + ((4 + base) if (kind, arm) == ("natural", ("rankmin", 0.5)) else 0)

    s = rank.summarize(_records(cfg, acc), cfg)
    assert s.verdict.startswith("Lowering rank helped on 2 of 4 comparisons (RankMin 0.5 − natural")
    assert "beyond its damage-matched control on RankMin 0.5 − Matched RankMin 0.5" in s.verdict
    row = s.tables["verdict"][1][0]
    assert row[3] == "+4.0 +5.0 +6.0 +7.0" and row[-1] == "better"


def test_synthetic_symmetric_damage_does_not_call_lower_rank_better():
    """Both directions cost the same as their damage-matched controls (the first pass's
    pattern: RankMin and RankMax each ~4 points): any projection costs accuracy, rank does not.
    The verdict must not call lower rank better, and must say that raising rank's cost is not
    distinguishable from the control's."""
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, base):
        return _base(kind) - (0 if arm == rr.NONE else (4, 5, 4, 5)[base])

    s = rank.summarize(_records(cfg, acc), cfg)
    assert s.glue["rank_status"].startswith("Agrees with the paper: lowering rank did not help")
    assert "helped" not in s.verdict.replace("did not help", "") and "better" not in s.verdict
    assert "Lowering rank cost accuracy on RankMin 0.5 − natural clean -4.50" in s.verdict
    assert "Raising rank hurt on RankMax 1.5 − natural clean -4.50" in s.verdict
    assert "not distinguishable from its damage-matched control (RankMax 1.5 − Matched" in s.verdict
    status = {(r[1], r[2]): r[-1] for r in s.tables["verdict"][1]}
    assert status["RankMax 1.5 − natural", "clean"] == "worse"
    assert status["RankMax 1.5 − Matched RankMax 1.5", "clean"] == "gain ≥ 1 excluded"
    assert s.glue["rank_d_nat_rankmax150_none_rob1"] == "-4.50"


def test_synthetic_noisy_differences_are_not_decided_and_say_what_was_detectable():
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, base):  # every projection arm: +3, -2, +4, +1 points over plain
        return _base(kind) + (0 if arm == rr.NONE else (3, -2, 4, 1)[base])

    stats = rr.comparisons(_records(cfg, acc), cfg)
    s = stats[0]
    assert s["diffs"] == [3, -2, 4, 1] and 1 - s["level"] < 0.05  # a Holm step's level
    mde = detectable(math.sqrt(7), 4, level=s["level"])  # exact noncentral t, n=4 bases
    assert s["mde"] == pytest.approx(mde)
    assert [x["p_holm"] for x in stats] == pytest.approx(
        list(holm([x["p"] for x in stats])), nan_ok=True
    )
    text = rg.verdict_text(stats, cfg.margin)
    assert text.startswith("Not decided at this scale whether lowering rank helps (4 of 4")
    assert "points (80% power)" in text


def test_holm_turns_a_single_significant_comparison_into_undecided():
    """One comparison at p ~ 0.01 alone is decided; among the chapter's 16 it is not."""
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, base):
        hit = (kind, arm) == ("natural", ("rankmin", 0.5))
        spread = (0, 1, -1, 0)[base] * (arm != rr.NONE)
        return _base(kind) + ((10, 11, 10, 11)[base] if hit else spread)

    stats = rr.comparisons(_records(cfg, acc), cfg)
    first = stats[0]
    assert first["p"] < 0.05 and first["p_holm"] >= first["p"]
    assert all(s["p_holm"] >= s["p"] for s in stats if math.isfinite(s["p"]))


def test_synthetic_gates_and_unmoved_rank_are_not_counted():
    cfg = get_profile("rank", "cpu")
    ratio = {**RATIO, "rankmax": 1.01}  # RankMax barely moved the rank
    recs = _records(cfg, lambda k, a, b: 40 if k == "natural" else 60, ratio)  # natural < gate
    stats = rr.comparisons(recs, cfg)
    assert {s["status"] for s in stats if s["kind"] == "natural"} == {"base below its gate"}
    adv = {s["pair"]: s["status"] for s in stats if s["kind"] == "adversarial"}
    assert adv["RankMinAdv 0.5 − adversarial"] == "gain ≥ 1 excluded"
    assert adv["RankMaxAdv 1.5 − adversarial"] == "rank moved < 5%"
    text = rg.verdict_text(stats, cfg.margin)
    # the adversarial decision leads; the natural kind is named as not testable after it
    assert text.startswith("Agrees with the paper on the adversarial bases: lowering rank did "
                           "not help (in all 2")  # fmt: skip
    assert (
        "Not testable at this scale: natural bases: 0 of 4 past their gate (natural base " in text
    )
    s = rank.summarize(recs, cfg)
    assert s.glue["rank_status"] == ("Agrees with the paper on the adversarial bases: lowering "
                                     "rank did not help")  # fmt: skip
    g = s.glue  # not counted: text, never "nan"
    assert g["rank_d_nat_rankmin50_none_clean_p"] == "not counted: base below its gate"
    assert g["rank_d_adv_rankmax150_none_rob8_p"] == "not counted: rank moved < 5%"
    assert g["rank_d_nat_rankmin50_none_clean"] == g["rank_nat_clean"] == "n/a"
    assert not [k for k, v in g.items() if "nan" in str(v)]
    assert "nan" not in s.verdict + s.ours and "nan" not in str(s.tables)


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
    file is gone when a fine-tuning record is missing. Every record names its data (a
    fine-tuning job's data set is nested in its base's params) and the checksum of the
    weights it loaded (issue 24, item 5)."""
    from bplib.data import CifarData

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    fake = CifarData(x[:64], y[:64], x[64:], y[64:], [str(i) for i in range(10)], "synthetic", "t")
    monkeypatch.setattr(rank.data, "load_cifar", lambda name, data_dir=None: fake)
    monkeypatch.setattr(runner, "data_identity", lambda name, data_dir=None: f"{name} fake-id")
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
    assert {r["provenance"]["data"] for r in records} == {"cifar10_small fake-id"}
    assert ft["weights"] == {weights.name: runner.file_identity(weights)}
    adv_weights = records[1]["result"]["weights"]  # the adversarial base loaded the natural one
    assert adv_weights == {weights.name: runner.file_identity(weights)}
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
    numbers = [v for k, v in s.glue.items() if k in FLOAT_GLUE]
    assert s.ours.count("[") == 2 and all(math.isfinite(v) for v in numbers)
    assert not [k for k, v in s.glue.items() if "nan" in str(v)]
    # the paper's RankMax - natural beside ours, same contrast and sign (contract item 15)
    g = s.glue
    low, mean = (g[f"rank_d_nat_rankmax150_none_rob1{x}"] for x in ("_lo", ""))
    assert low == "n/a" or float(low) <= float(mean)
    assert g["rank_paper_rankmax_minus_nat_rob1"] < 0 and g["rank_status"] in s.verdict
    assert len(s.tables["verdict"][1]) == 16
    assert all(r["provenance"]["data"] for r in records)
    assert all(r["result"]["weights"] for r in records if r["params"]["phase"] == "finetune")
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


def test_synthetic_one_base_below_its_gate_is_shown_and_left_out():
    """Natural base 2 fails its gate (40% < 50%): the bases' table shows it, every interval runs
    over the 3 others, and the verdict names it; its kind stays testable (3 bases pass)."""
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, base):  # RankMin 0.5 on the natural bases: +4, +5, (-30), +7 points
        if kind == "natural" and base == 2:
            return 40 - 30 * (arm == ("rankmin", 0.5))
        return _base(kind) + ((4 + base) if (kind, arm) == ("natural", ("rankmin", 0.5)) else 0)

    s = rank.summarize(_records(cfg, acc), cfg)
    gates = {r[0]: r[-1] for r in s.tables["bases"][1]}
    assert gates["natural (seed 2)"] == "left out: test 40.0% < 50%"
    assert gates["natural (seed 1)"] == gates["adversarial (seed 2)"] == "passed"
    row = s.tables["verdict"][1][0]
    assert row[3] == "+4.0 +5.0 +7.0" and row[-1] != "base below its gate"
    assert s.tables["ResNet-18, cifar10"][1][0][3].startswith("80.00 ± 0.00 (n=3)")
    assert "Left out below their gate: natural base seed 2 (test 40.0% < 50%)." in s.verdict
    assert s.glue["rank_left_out"] == "natural base seed 2 (test 40.0% < 50%)"
    assert s.glue["rank_nat_test"] == "80.0"  # the plain fine-tunes past the gate
    stats = rr.comparisons(_records(cfg, acc), cfg)
    assert {x["n"] for x in stats if x["kind"] == "natural"} == {3}
    assert not any(x["gate"] for x in stats)


@pytest.mark.parametrize(
    "spread,words",
    [
        ((-4, -5, -4, -5), "Raising rank hurt on RankMax 1.5 − natural clean -4.50"),
        ((4, 5, 4, 5), "Raising rank helped on RankMax 1.5 − natural clean +4.50 [+"),
        ((3, -2, 4, 1), "Not decided at this scale whether raising rank hurts (RankMax 1.5 − "),
    ],
)
def test_synthetic_raising_rank_says_what_its_status_is(spread, words):
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, base):  # RankMax (both kinds) differs from plain by ``spread``
        return _base(kind) + (spread[base] if arm[0] == "rankmax" else 0)

    text = rank.summarize(_records(cfg, acc), cfg).verdict
    assert words in text and text.count("Raising rank") + text.count("raising rank") >= 1
    assert text.startswith("Agrees with the paper: lowering rank did not help")
    if min(spread) > 0:
        assert "against the belief; beyond its damage-matched control on RankMax 1.5" in text
        assert "did not hurt" not in text
    if spread == (3, -2, 4, 1):
        assert "points (80% power)); not distinguishable from its damage-matched control" in text
        assert "hurt on" not in text and "did not hurt" not in text


def test_synthetic_control_decided_the_other_way_and_excluded_gains_are_named():
    """A RankMax whose own effect is undecided but which beats a control that costs 20 points:
    the verdict says "better than its damage-matched control", never lists that comparison as
    "not distinguishable"; an undecided lowering-rank sentence names the comparisons where a
    gain was excluded too (the cpu records' pattern)."""
    cfg = get_profile("rank", "cpu")

    def acc(kind, arm, base):
        noise = (3, -2, 4, 1)[base]
        if arm[0] == "rankmax":
            return _base(kind) + noise
        if arm[0] == "control_rankmax":
            return _base(kind) + noise - (20, 21, 20, 21)[base]
        if (kind, arm[0]) == ("adversarial", "rankmin"):  # undecided; natural RankMin: equal
            return _base(kind) + noise
        return _base(kind)

    text = rank.summarize(_records(cfg, acc), cfg).verdict
    assert text.startswith("Not decided at this scale whether lowering rank helps (2 of 4 ")
    assert "; a gain of 1 point or more excluded on RankMin 0.5 − natural clean +0.00" in text
    assert "; better than its damage-matched control on RankMax 1.5 − Matched RankMax 1.5 clean" \
        in text  # fmt: skip
    assert "not distinguishable from its damage-matched control (RankMax 1.5 − Matched" not in text
    assert "Against the damage-matched controls" not in text  # said once, in its sentence


def test_synthetic_excluded_raising_rank_does_not_hurt_significantly():
    cfg = get_profile("rank", "cpu")
    s = rank.summarize(_records(cfg, lambda k, a, b: _base(k)), cfg)  # every gain excluded
    assert (
        "Raising rank did not hurt significantly on RankMax 1.5 − natural clean +0.00" in s.verdict
    )


def test_summarize_refuses_a_fine_tune_made_from_other_base_weights(tmp_path):
    """A fine-tune names the checksum of the base weights it loaded; summarize compares it with
    the base's weights file in the store, refuses a mismatch, and skips absent files."""
    from bplib.results import save_arrays

    cfg = get_profile("rank", "cpu")
    recs = _records(cfg, lambda k, a, b: _base(k))
    for r in recs:  # as the store writes them: the params hold the seed too
        r["params"] = {**r["params"], "seed": r["seed"]}
    ft = next(r for r in recs if r["params"]["phase"] == "finetune")
    params = {k: v for k, v in ft["params"].items() if k != "seed"}
    base = rank.needs(runner.job(rank.EXPERIMENT, params, ft["seed"]))
    ctx = runner.Context("cpu", "cpu", root=tmp_path)
    path = ctx.arrays(base)
    ft["result"]["weights"] = {path.name: "sha256:0000000000000000"}
    rank.summarize(recs, cfg, root=tmp_path)  # no weights file in the store: not checked
    path.parent.mkdir(parents=True)
    save_arrays(path, w=torch.zeros(3).numpy())
    with pytest.raises(ValueError, match="made from base weights .* but the store holds"):
        rank.summarize(recs, cfg, root=tmp_path)
    ft["result"]["weights"] = {path.name: runner.file_identity(path)}
    rank.summarize(recs, cfg, root=tmp_path)  # the same file: accepted


def test_summary_and_figures_with_an_arm_not_run_on_a_network_synthetic():
    """The dry run's dealt arms leave most (network, arm) pairs without records: the summary
    and both figures show the arms that ran and skip the others."""
    import matplotlib

    matplotlib.use("Agg")
    cfg = get_profile("rank", "cpu")
    recs = [
        r for r in _records(cfg, lambda k, a, b: _base(k)) if r["params"].get("arm") != "rankmax"
    ]
    rank.summarize(recs, cfg)
    w = rr.bases(cfg)[0]
    fig = rr.plot_figure2(recs, cfg, *w[1:])
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert "RankMinAdv 0.5" in labels and "RankMaxAdv 1.5" not in labels  # the last panel's
    ax = rr.plot_spectra(recs, cfg, w, 0)
    names = [t.get_text().split(" (eff.")[0] for t in ax.get_legend().get_texts()]
    assert "RankMin 0.5" in names and "RankMax 1.5" not in names and "Matched RankMax 1.5" in names
