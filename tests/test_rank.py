import pytest
import torch
from torch import nn

from bplib.models import make_model
from bplib.rank import (
    RankProjection,
    conv_input_sizes,
    conv_singular_values,
    effective_rank,
    layer_spectra,
    named_block_convs,
    project_kernel,
    quantiles,
)


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
    from bplib.rank import ROWS
    from bplib.rank_report import paired_difference, rank_ratio, table4_rows

    bits = {"natural": "11110000", "RankMin": "11111100"}
    records = [_synthetic_record(r, True, bits.get(r, "10101010"), 4.0) for r in ROWS]
    m, lo, hi = paired_difference(records, True, "RankMin", "natural", "test")
    assert m == pytest.approx(25.0) and lo < 25 < hi
    assert rank_ratio(records, True, "natural", "init")[0] == pytest.approx(0.5)
    rows = table4_rows(records, True)
    assert rows[0][0] == "natural" and rows[0][3].startswith("50.00") and rows[0][4] == "94.66"
