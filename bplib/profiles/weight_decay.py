"""Profiles of chapter 2 (weight decay vs norm-bias, paper Tables 2-3); the paper's numbers are
``bplib.paper.TABLE2`` and ``TABLE3``.

Every model row names its registry model and keyword arguments, the weight-decay coefficient
(``weight_decay``), the norm-bias coefficient (``norm_bias_coef``), two norm targets
``mu2_below`` / ``mu2_above`` (squared norms below and above the model's initial squared norm),
``paper_arm`` (the arm that uses the paper's mu^2) and the tables it enters (``normalize``:
False = Table 2, inputs in [0, 1]; True = Table 3). ``arms`` are the regularizers each row is
trained with (``bplib.claims.weight_decay.ARMS``): none; weight decay at the model's
coefficient; weight decay at the norm-bias coefficient (the strength control); norm-bias with
mu^2 below the initial norm (the paper's regime for its batch-norm models: a strong weight decay
with a floor); norm-bias with mu^2 above it (the norm is inflated).

Weight-decay coefficients at ``paper``, from each architecture's original paper or code:
ResNet-18 1e-4 (He et al. 2016, CIFAR-10 experiments); DenseNet-40 1e-4 (Huang et al. 2017);
MobileNetV2 4e-5 (Sandler et al. 2018, ImageNet: it has no CIFAR setting); Fixup ResNet-20
1e-4 (default ``--decay`` of the Fixup reference code ``cifar/cifar_train.py``); MLP 1e-4 (no
original paper: the default ``--weight_decay`` of the official ``NormBias/main.py``). Norm-bias
coefficients and the paper's mu^2 are the paper's; the other target of each row is ours (about
twice the initial squared norm above it, about 0.4 of it below: the paper's ResNet-18 ratio
2,500 / 6,403). Initial squared norms (seed 0, all parameters): ResNet-18 6,403, DenseNet-40
2,952, MobileNetV2 23,396, Fixup ResNet-20 78, MLP 2048^3 2,053, ResNet-18 width 1/8 803.

``cpu`` (issue 22) is two waves, both jobs of the profile, so that one ``bplib-run weight_decay
--profile cpu --jobs 2`` runs them in order (``bplib.claims.weight_decay.waves``):

1. **The pilot** looks for the regime where the networks fit their data: a grid of cells
   ``pilot_n_train`` x ``pilot_epochs`` x ``pilot_augment``, then ``pilot_extra_cells`` (lr
   /10 at ``cell_milestones`` of each cell's epochs), arms ``pilot_arms`` (none, weight decay
   at the usual CIFAR coefficient 5e-4, weight decay at the paper's norm-bias coefficient
   0.005, and norm-bias toward the large norm, the arm the verdict reads), seeds
   ``pilot_seeds``. Every run's training subset
   is drawn by its seed (the held-out split is one fixed set).
2. **The arms**: all five arms in the cell that code picks from the pilot's records
   (:mod:`bplib.claims.weight_decay.plan`): among the cells whose every run reached
   ``gate_train_acc`` (training accuracy on the un-augmented training images, eval mode), the
   one with the largest paired weight-decay effect (``wd_strong - none``, held-out accuracy)
   relative to its seed spread. Seeds (``seeds``, fresh ones: the pilot's runs never enter the
   verdict, so picking the cell on them does not bias it) are sized from that cell: the
   smallest n with 80% exact noncentral-t power for the pilot's effect at its spread, at least
   ``min_seeds``, at most what ``arm_images`` (the arms' budget, images x epochs over all arm
   runs) affords in that cell, and at most ``len(seeds)``. Arm jobs past that n store a record
   that says so and train nothing.

Model: ResNet-18 at width 1/16 (44,622 parameters). Timing pilot (issue 22, this machine,
niced on a shared machine, one thread, float32, batch 128, augmentation on; times are upper
bounds): ResNet-18 width 1/8 630 images/s, width 1/16 984 images/s, Fixup ResNet-20 236
images/s. The Fixup network (no batch norm: weight decay there is a true norm penalty, the case
the belief is about) costs 2.7x width 1/8 and 4.2x width 1/16 per image: its pilot grid alone
would take the whole budget, so it runs only at ``gpu``. Width 1/8 leaves too little for the
arms (its largest cell would get fewer than 6 seeds), so ``cpu`` uses width 1/16, whose two
grid sizes and two epoch budgets still include cells that interpolate (no augmentation).

Cost, measured: the grid's first run (8 cells, 96 runs, 3.24M images; clean commit b5e9f06)
took 3,341 CPU-seconds, about 970 images per CPU-second with start-up and evaluation. The two
extra cells (12 runs each of 1,000 x 60 and 2,000 x 60: 2.16M images) and the arms'
budget ``arm_images`` 3.6M (6 seeds x 5 arms in the largest cell, 2,000 x 60; 12 seeds in
1,000 x 60; the run picked 2,000 x 60) took 5,664 CPU-seconds (clean commit a977ae6). From an
empty store the chapter is about 9,005 CPU-seconds: 75 minutes on 2 idle cores, at issue 22's
limit (the first grid's records are committed, so a re-run reads them).
"""

from bplib.profiles import standin

ARMS = ["none", "weight_decay", "wd_strong", "nb_below", "nb_above"]


# The rows below are a table, one row per line: ruff leaves them as written.
# fmt: off
def _row(paper_row: str, model: str, model_kw: dict, weight_decay: float, norm_bias_coef: float,
         mu2: tuple[float, float], paper_arm: str, normalize: list[bool]) -> dict:
    """One model row; ``mu2`` = (mu2_below, mu2_above), target squared norms."""
    return dict(paper_row=paper_row, model=model, model_kw=model_kw, weight_decay=weight_decay,
                norm_bias_coef=norm_bias_coef, mu2_below=mu2[0], mu2_above=mu2[1],
                paper_arm=paper_arm, normalize=normalize)


# The paper's profile in full; ``cpu`` and ``smoke`` below name only the values they change.
PAPER = {
    "datasets": ["cifar10", "cifar100"],
    "n_train": None,  # training images (None = all left after the held-out split: 50,000)
    "n_holdout": 0,  # images of the training set held out for evaluation (never trained on)
    "n_test": None,  # test images evaluated (the first n; None: all)
    "epochs": 300,  # passes over the training subset
    "lr": 0.1,  # initial SGD learning rate
    "milestones": [100, 175, 225, 275],  # epochs at which lr is divided by 10
    "batch_size": 128,  # images per step (CIFAR-10)
    "batch_size_cifar100": 256,  # images per step on CIFAR-100 (official code)
    "momentum": 0.9,  # SGD momentum
    "augment": True,  # random crop (pad 4) + horizontal flip
    "bf16": False,  # bf16 autocast for training (slower than float32 on CPUs without bf16)
    "form": "gradient",  # regularizer form: "gradient" (official) or "loss"
    "scope": "all",  # regularized parameters: "all" (official) or "no_bn_bias"
    "arms": list(ARMS),  # the paper ran none, weight decay and its norm-bias (paper_arm)
    # Gate: a run that ends below twice chance on its own training images (train accuracy, %)
    # learned nothing; it is shown and left out (with its pair) of every interval.
    "gate_train_acc": 20.0,
    "delta": 0.25,  # equivalence margin (accuracy points): the paper's own nb - wd differences
    # name: row (weight-decay and norm-bias coefficients, (mu2_below, mu2_above), the paper's
    # arm, normalize: False = Table 2, True = Table 3). Fixup: the paper's mu^2 1000 is above
    # the initial 78 (the inflating regime). MLP: coefficient and mu^2 not stated in the paper;
    # ours, about 2x its initial norm.
    "models": {
        "resnet18": _row("ResNet-18", "resnet18", {}, 1e-4, 0.005, (2500.0, 12800.0),
                         "nb_below", [False, True]),
        "densenet40": _row("DenseNet-40", "densenet40", {}, 1e-4, 0.005, (2500.0, 6000.0),
                           "nb_below", [False, True]),
        "mobilenetv2": _row("MobileNetV2", "mobilenetv2", {}, 4e-5, 0.001, (5000.0, 47000.0),
                            "nb_below", [False, True]),
        "resnet20_fixup": _row("ResNet-20 Fixup", "resnet20_fixup", {}, 1e-4, 0.0005,
                               (30.0, 1000.0), "nb_above", [True]),
        "mlp": _row("MLP", "mlp", {"widths": [2048, 2048, 2048]}, 1e-4, 0.005, (800.0, 4000.0),
                    "nb_above", [True]),
    },
    "seeds": list(range(10)),
    # The pilot (issue 22): None at paper (the paper's own design, no search); at cpu/gpu the
    # grid of cells training-set size x epochs x augmentation, its arms and seeds; see above.
    "pilot_n_train": None,  # training images per cell (list), None: no pilot
    "pilot_epochs": None,  # epochs per cell (list)
    "pilot_augment": None,  # augmentation per cell (list of bool)
    # cells added to that grid, [training images, epochs, augmentation] each: a second look
    # where the grid's nearest cells did not quite fit (cpu), without the whole product
    "pilot_extra_cells": [],
    # the norm-bias arm the verdict reads (nb_above) is piloted too: a cell qualifies only if
    # every piloted arm fits there, so the deciding comparison cannot lose its runs to the gate
    "pilot_arms": ["none", "weight_decay", "wd_strong", "nb_above"],
    "pilot_seeds": None,  # seeds of every pilot cell (list)
    "cell_milestones": [0.5, 0.75],  # lr / 10 at these fractions of a cell's epochs
    "min_seeds": 6,  # the arms get at least this many paired seeds (if the budget allows)
    "arm_images": None,  # budget of the arms, images x epochs summed over every arm run
}
CPU = {
    **PAPER,
    "datasets": ["cifar10"],  # all 50,000 train images, first 1,000 test images offline
    "n_holdout": 5000,  # held-out training images, never trained on: the verdict's split
    # Not read when there is a pilot (the arms train in the cell it picks): the largest cell,
    # which the results page shows as the scale.
    "n_train": 2000,
    "epochs": 30,
    "milestones": [15, 22],
    # Gate: interpolation (issue 22): a run that ends below 95% accuracy on its own training
    # images (un-augmented, eval mode) is shown and left out with its pair.
    "gate_train_acc": 95.0,
    # Equivalence margin (points), fixed before the run: the norm-bias arm must stay within 1
    # point of weight decay at the same coefficient to count as "does as well".
    "delta": 1.0,
    "pilot_n_train": [1000, 2000],
    "pilot_epochs": [15, 30],
    "pilot_augment": [False, True],
    # The grid's first run (records of b5e9f06): no cell fit; the nearest, both without
    # augmentation at 30 epochs, ended at 92.3% (1,000 images) and 87.5% (2,000) in their
    # weakest run, every augmented run below 53%. So the grid gains the two un-augmented cells
    # at 60 epochs (augmented cells at 60 epochs would cost as much and cannot fit).
    "pilot_extra_cells": [[1000, 60, False], [2000, 60, False]],
    "pilot_seeds": [0, 1, 2],
    "arm_images": 3_600_000,  # 6 seeds x 5 arms in the largest cell (2,000 x 60)
    # ResNet-18 at width 1/16: 44,622 parameters, initial squared norm 402; weight decay at the
    # usual CIFAR coefficient 5e-4, the paper's norm-bias coefficient 0.005; mu2 below 0.4x the
    # initial squared norm (the paper's ResNet-18 ratio), above: 2x.
    "models": {"resnet18_w16": _row("ResNet-18", "resnet18", {"width": 0.0625}, 5e-4, 0.005,
                                    (160.0, 800.0), "nb_below", [True])},
    "seeds": list(range(100, 112)),  # the arms' seeds (at most 12; sized from the pilot)
}
SMOKE = {
    **CPU,
    "datasets": ["cifar10_small"],  # first 2,000 train + 1,000 test images
    "n_holdout": 500,
    "gate_train_acc": 0.0,
    "n_train": 64,
    "epochs": 2,
    "milestones": [1],
    "pilot_n_train": [64],
    "pilot_epochs": [1, 2],
    "pilot_augment": [False],
    "pilot_extra_cells": [],
    "pilot_seeds": [0, 1],
    "min_seeds": 2,
    "arm_images": 5 * 3 * 64 * 1,  # 3 seeds in the 1-epoch cell, 1 in the 2-epoch one
    "seeds": [100, 101, 102, 103],  # the fourth is sized out: exercises the skipped record
}
# One GPU for about an hour (issue 26): the cpu design (pilot grid, then the five arms in the
# cell it picks, seeds sized from it) at sizes a GPU affords, on the paper's Fixup ResNet-20: no
# batch norm, so weight decay is a true norm penalty there (the case the belief is about), and
# the paper's coefficient and mu^2 (above its initial squared norm 78: the inflating regime).
# Training in mixed precision (bf16; fp16 with a scaler on a T4). Estimated time:
# benchmarks/records/gpu_estimate.md (the arms counted at their worst case: the budget spent
# in the costliest cell).
GPU = {
    **CPU,
    "n_train": 20000,
    "epochs": 60,
    "milestones": [30, 45],
    "bf16": True,  # mixed precision on a GPU (bplib.train); measurements stay float32
    "pilot_n_train": [5000, 20000],
    "pilot_epochs": [30, 60],
    "pilot_extra_cells": [],
    "pilot_seeds": [0, 1, 2],
    "arm_images": 12_000_000,
    "models": {"resnet20_fixup": PAPER["models"]["resnet20_fixup"]},
    "seeds": list(range(100, 116)),
}
# fmt: on
PROFILES = {"smoke": SMOKE, "cpu": CPU, "paper": PAPER, "gpu": GPU}


# The dry run (make paper-dryrun, make gpu-dryrun): every model, arm and data set of the profile
# (CIFAR-100 as its 20-image offline stand-in) for 2 batches of 16 images (1 epoch), one seed.
DRYRUN = {
    "datasets": standin,
    "n_train": 32,  # 2 batches of 16 (CIFAR-100 stand-in too)
    "batch_size": 16,
    "batch_size_cifar100": 16,
    "n_test": 20,  # the CIFAR-100 stand-in has 20 test images (32 was clipped to them)
    "epochs": 1,
    "milestones": [],
    "seeds": [0],
    # the pilot (gpu): one cell per augmentation of 2 batches, one seed; the arms get one seed
    "pilot_n_train": lambda v: None if v is None else [32],
    "pilot_epochs": lambda v: None if v is None else [1],
    "pilot_seeds": lambda v: None if v is None else [0],
    "arm_images": lambda v: None if v is None else 5 * 32,
}
