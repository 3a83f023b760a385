"""The gpu profile (issue 26): the cpu design at other sizes, within one GPU-hour by the estimate.

A gpu design is the cpu design with sizes changed. Every profile key falls in one class:

- a size or budget (:data:`SIZES`): data, epochs and schedules inside them, widths, seeds,
  measurement budgets; free, but ``seeds`` never fewer than cpu's (the unit of inference);
- a gate (:data:`GATES`): a threshold a run must pass; at gpu at least cpu's (a stricter gate,
  never a looser one);
- precision (``bf16``): mixed-precision training on a GPU, where the chapter states it is safe;
- every other key (arms, learning rates, regularizers, attack, the statistics' margins and
  measurements, data sets): equal to cpu's or to paper's, so the same claim code reads the same
  statistics from gpu records as from cpu records.

The estimate is counted work (``benchmarks/gpu_estimate.py``), not a timing: cheap to recompute.
"""

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bplib.measures import descent, hessian
from bplib.profiles import CHAPTERS, chapter_profiles, get_profile

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "benchmarks" / "records" / "gpu_estimate.json"

SIZES = {
    "seeds", "n_train", "n_test", "n_holdout", "epochs", "milestones", "recipes", "widths",
    "width", "trajectory_width", "max_elems", "base_images", "base_epochs", "finetune_images",
    "finetune_milestones", "rank_epochs", "n_robust", "gd_epochs", "lanczos_max_hvp",
    "compare_power_iters", "lemma1_epochs", "lemma1_gd_epochs", "lemma1_milestones",
    "witness_epochs",
    "models",  # weight decay: rows of paper's models (checked below), their width a size
    "pilot_n_train", "pilot_epochs", "pilot_extra_cells", "pilot_seeds", "arm_images",  # wd pilot
}  # fmt: skip
GATES = {"gate_train_acc", "min_train_acc", "gate"}
PRECISION = {"bf16"}


def _estimate():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module("gpu_estimate")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _numbers(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, (*path, k))
    else:
        yield path, value


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_gpu_design_is_the_cpu_design_with_sizes_changed(chapter):
    p = chapter_profiles(chapter)
    cpu, paper, gpu = p["cpu"], p["paper"], p["gpu"]
    for key, value in gpu.items():
        if key in SIZES | PRECISION:
            continue
        if key in GATES:  # the same thresholds, none looser than cpu's
            assert dict(_numbers(value)).keys() == dict(_numbers(cpu[key])).keys(), key
            for (path, v), (_, c) in zip(_numbers(value), _numbers(cpu[key]), strict=True):
                assert v >= c, (key, path, v, c)
            continue
        assert value in (cpu[key], paper[key]), (key, value, cpu[key], paper[key])
    assert len(gpu["seeds"]) >= max(len(cpu["seeds"]), 2)
    if chapter == "weight_decay":  # paper's networks, on the cpu design's inputs
        for key, row in gpu["models"].items():
            assert {**row, "normalize": None} == {**paper["models"][key], "normalize": None}
            assert set(row["normalize"]) <= set(paper["models"][key]["normalize"])


def test_the_gpu_designs_are_the_ones_issue_26_asks_for():
    wd, ntk = get_profile("weight_decay", "gpu"), get_profile("ntk", "gpu")
    # weight decay (issue 22): the cpu pilot-then-arms design on the paper's Fixup ResNet-20
    assert set(wd.models) == {"resnet20_fixup"} and len(wd.arms) == 5
    assert wd.gate_train_acc >= 95 and wd.pilot_n_train and wd.min_seeds >= 6
    assert ntk.widths["wrn16"] == [1, 2, 4, 8] and len(ntk.seeds) >= 4 and ntk.n_train >= 5000
    for family in ("resnet18", "resnet18_noskip", "resnet18_nobn", "resnet18_noskip_nobn"):
        ws = ntk.widths[family]  # parameters grow as width^2: 1.5 decades = width x 10^0.75
        assert max(ws) / min(ws) >= 10**0.75, family
    assert get_profile("rank", "gpu").width == 1.0
    assert tuple(get_profile("minima", "gpu").widths) == (2048, 2048, 1024)
    assert get_profile("minima", "gpu").gd_epochs > 0


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_gpu_chapter_fits_one_hour_on_the_h100_class_estimate(chapter):
    est = _estimate()
    minutes = est.chapter_estimate(chapter, "gpu")["minutes"]
    assert minutes["H100"] <= est.BUDGET_MIN, (chapter, minutes)
    record = json.loads(RECORD.read_text())  # the committed record is the current estimate
    stored = record["estimate"]["gpu"][chapter]["minutes"]
    assert stored == pytest.approx(minutes, rel=1e-6), "rerun paper_estimate.py --profile gpu"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_parameters_cell_quotes_the_t4_estimate(chapter):
    record = json.loads(RECORD.read_text())
    n = _estimate().t4_minutes(record, chapter)
    text = (REPO / "chapters" / f"{chapter}.md").read_text()
    quoted = re.findall(r"profile = 'gpu': about ([\d,]+) minutes on a T4 \(estimate\)", text)
    assert quoted == [f"{n:,}"], (chapter, quoted, n)
    # the Colab paragraph types both estimates too (they are not glued: it precedes the setup)
    h100 = round(record["estimate"]["gpu"][chapter]["minutes"]["H100"])
    prose = " ".join(text.split())
    assert (
        f"about {h100} minutes on an H100-class GPU and about {n:,} minutes on Colab's T4" in prose
    )
    assert "BPLIB_RECORDS" in text and "checkpoints" in text and "'gpu'" in text


def test_the_estimate_counts_a_launch_floor_and_the_precision():
    est = _estimate()
    count = {"flops_per_image": 1e9, "ops_per_step": 300}
    h100 = est.GPUS["H100"]
    mixed = est.step_seconds(count, 128, "mixed", h100)
    assert mixed == pytest.approx(max(128e9 / (h100["mixed_tflops"] * 1e12), 300e-5))
    assert est.step_seconds(count, 128, "float32", h100) > mixed  # float32 is slower
    tiny = {"flops_per_image": 1.0, "ops_per_step": 300}
    assert est.step_seconds(tiny, 128, "mixed", h100) == pytest.approx(300 * 10e-6)


def test_hessian_measurements_run_without_tf32():
    seen = []

    class Probe(nn.Linear):  # records the TF32 flags its forward runs under
        def forward(self, x):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), Probe(12, 3))
    x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        hessian.full_loss_grad(model, x, y)
        hessian.HessianOperator(model, x, y).matvec(torch.ones(39).numpy())
        descent.line_search(model, x, y, 0.0, torch.ones(39).numpy(), [0.1])
        assert seen and set(seen) == {(False, False)}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
