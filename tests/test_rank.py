import math

import pytest
import torch
from torch import nn

from bplib import paper, runner
from bplib.claims import rank
from bplib.data import REPO_ROOT
from bplib.measures.rank import (
    RankProjection,
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


def _synthetic_record(row, skip, test_bits, erank):
    layer = {"effective_rank": erank, "spectrum_quantiles": [1.0], "name": "x", "n": 4}
    result = {
        "train_acc": 50.0,
        "holdout_acc": 40.0,
        "test_correct": test_bits,
        "robust_correct": {"8/255": test_bits[:4], "1/255": test_bits[:4]},
        "spectra": [layer] * 3,
        "spectra_init": [{**layer, "effective_rank": 2 * erank}] * 3,
    }
    return {"params": {"row": row, "skip": skip}, "seed": 0, "result": result}


def test_synthetic_report_paired_difference_and_ratios():
    bits = {"natural": "11110000", "RankMin": "11111100"}
    records = [_synthetic_record(r, True, bits.get(r, "10101010"), 4.0) for r in rank.ROWS]
    m, lo, hi = rank.paired_difference(records, True, "RankMin", "natural", "test")
    assert m == pytest.approx(25.0) and lo < 25 < hi
    assert rank.rank_ratio(records, True, "natural", "init")[0] == pytest.approx(0.5)
    rows = rank.table4_rows(records, True)
    assert rows[0][0] == "natural" and rows[0][3].startswith("50.00") and rows[0][4] == "94.66"


def test_synthetic_summarize_tables_verdict_and_glue():
    """Synthetic records: RankMin is right on 2 more of 8 test images than natural (ResNet-18);
    every other pair is equal. Adversarial rows have the same effective rank as natural."""
    bits = {"natural": "11110000", "RankMin": "11111100"}
    records = [
        _synthetic_record(r, s, bits.get(r, "10101010") if s else "10101010", 4.0)
        for r in rank.ROWS
        for s in (True, False)
    ]
    cfg = get_profile("rank", "smoke")
    summary = rank.summarize(records, cfg)
    assert set(summary.tables) == {"ResNet-18", "Skipless ResNet-18", "verdict"}
    headers, rows = summary.tables["ResNet-18"]
    assert headers == rank.TABLE4_HEADERS and len(headers) == len(rows[0]) == 10
    assert [r[0] for r in rows] == list(rank.ROWS) and rows[2][
        4
    ] == f"{paper.TABLE4['RankMin'][1]:.2f}"
    assert summary.tables["Skipless ResNet-18"][1][0][2] == "n/a"
    headers, rows = summary.tables["verdict"]
    assert headers == rank.VERDICT_HEADERS and len(rows) == 2 * len(rank.COMPARISONS)
    assert rows[0][:3] == ["ResNet-18", "RankMin - natural", "test"] and rows[0][3].startswith(
        "+25.00"
    )
    # 8 images cannot decide +25 points: no comparison supports the belief, none opposes it.
    assert all(r[4] == "no" for r in rows)
    assert summary.verdict.startswith("No comparison shows a significant benefit of lower rank")
    assert "cannot exclude benefits up to" in summary.verdict
    assert "ResNet-18: adversarial / natural effective rank 1.000" in summary.verdict
    assert summary.ours.startswith("ResNet-18 RankMin − natural, test +25.00 [")
    assert "RankMinAdv − adversarial, robust 8/255 +0.00" in summary.ours
    g = summary.glue
    assert g["rank_d_min"] == pytest.approx(25.0) and g["rank_d_min_lo"] < 25 < g["rank_d_min_hi"]
    assert g["rank_init_ratio"] == pytest.approx(0.5) and g["rank_adv_ratio"] == pytest.approx(1.0)
    assert g["rank_nat_erank"] == pytest.approx(4.0) and len(g) == 15
    assert all(isinstance(v, float) for v in g.values())


def test_synthetic_verdict_text_names_significant_comparisons():
    stat = dict(model="ResNet-18", lower_rank="RankMin", higher_rank="natural", metric="test")
    pro = {**stat, "diff": 5.0, "low": 1.0, "high": 9.0, "supports_belief": True, "against": False}
    con = {
        **pro,
        "diff": -5.0,
        "low": -9.0,
        "high": -1.0,
        "supports_belief": False,
        "against": True,
    }
    text = rank.verdict_text([pro, con], {"ResNet-18": (0.9, 0.8, 0.95)})
    assert text.startswith("Lower rank helped significantly in 1 of 2 comparisons (ResNet-18")
    assert "In 1 comparison(s) the lower-rank row was significantly *worse*." in text
    assert text.endswith("effective rank 0.900 [0.800, 0.950] (lower).")
    assert rank.verdict_rows([pro, con])[1][4] == "opposite"
    assert rank.fmt_interval((1.0, -0.5, 2.9)) == "+1.00 [-0.50, +2.90]"
    assert rank.fmt_interval((0.96712, 0.9, 1.0), 3, signed=False) == "0.967 [0.900, 1.000]"


def test_jobs_keys_params_and_order():
    """One key rule: params are the profile minus seeds/profile/skips/jobs, plus row and skip;
    adversarial rows first (they cost most); the committed cpu records are found by key."""
    cfg = get_profile("rank", "cpu")
    jobs = rank.jobs(cfg)
    assert len(jobs) == len(rank.ROWS) * len(cfg.skips) * len(cfg.seeds)
    expected = set(vars(cfg)) - {"seeds", "profile", "skips", "jobs"} | {"row", "skip"}
    assert all(set(j.params) == expected and j.experiment == "rank" for j in jobs)
    adversarial = [rank.ROWS[j.params["row"]][1] for j in jobs]
    assert adversarial == sorted(adversarial, reverse=True)
    assert jobs[0].cost == cfg.epochs * (1 + cfg.train_steps) and jobs[-1].cost == cfg.epochs
    committed = runner.stored(jobs, "cpu", REPO_ROOT / "data" / "records")
    assert all(r is not None for r in committed), "a committed cpu record is not found by key"


def test_summarize_committed_cpu_records():
    """The committed cpu records give the results page's row and the chapter's glue values."""
    cfg = get_profile("rank", "cpu")
    records = runner.stored(rank.jobs(cfg), "cpu", REPO_ROOT / "data" / "records")
    if any(r is None for r in records):
        pytest.skip("committed cpu rank records are incomplete")
    summary = rank.summarize(records, cfg)
    assert summary.ours.count("[") == 4 and "Skipless ResNet-18 RankMin − natural" in summary.ours
    assert summary.verdict.endswith(").") and "Effective rank after adversarial" in summary.verdict
    assert all(math.isfinite(v) for v in summary.glue.values())
    assert len(summary.tables["verdict"][1]) == 16
    assert rank.paper_headline().startswith("Table 4, ResNet-18: RankMin − natural, test -0.22;")


def test_synthetic_work_trains_a_row_on_the_context_device(monkeypatch, records_dir):
    """Synthetic 64-image data: ``work`` builds the model and data on ``ctx.device`` (CUDA
    when present), trains a RankMin row and stores a complete record through the runner."""
    from bplib.data import CifarData

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    fake = CifarData(x[:64], y[:64], x[64:], y[64:], [str(i) for i in range(10)], "synthetic", "t")
    monkeypatch.setattr(rank.data, "load_cifar", lambda name, data_dir=None: fake)
    seen, real_fit = [], rank.fit

    def fit(model, x, *args, **kwargs):
        seen.append((next(model.parameters()).device.type, x.device.type))
        return real_fit(model, x, *args, **kwargs)

    monkeypatch.setattr(rank, "fit", fit)
    cfg = get_profile("rank", "smoke", n_train=32, epochs=1)
    cfg.n_holdout, cfg.n_robust, cfg.num_quantiles, cfg.skips = 16, 8, 20, [True]
    job = next(j for j in rank.jobs(cfg) if j.params["row"] == "RankMin")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (record,) = runner.run([job], rank.work, runner.Context("smoke", device), n_procs=1)
    assert seen == [(device, device)]
    res = record["result"]
    assert record["provenance"]["device"].startswith(device)
    assert res["n_train"] == 32 and res["n_holdout"] == 16 and res["n_robust"] == 8
    assert len(res["test_correct"]) == 32 and set(res["robust_correct"]) == {"8/255", "1/255"}
    assert res["spectra_init"] is None and len(res["spectra"]) == 16
    assert res["history"]["hooks"][0]["op"] == "rankmin"


def test_layer_spectra_rounds_to_significant_digits():
    torch.manual_seed(0)
    model = make_model("resnet18", width=1 / 16)
    full, small = layer_spectra(model, 30), layer_spectra(model, 30, digits=4)
    assert [d["effective_rank"] for d in full] == [d["effective_rank"] for d in small]
    for a, b in zip(full, small):
        assert b["spectrum_quantiles"] == [float(f"{v:.4g}") for v in a["spectrum_quantiles"]]
