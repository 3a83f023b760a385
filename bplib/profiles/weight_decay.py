"""Profiles of chapter 2 (weight decay vs norm-bias, paper Tables 2-3); the paper's numbers are
``bplib.paper.TABLE2`` and ``TABLE3``.

Every model row names its registry model and keyword arguments, the weight-decay coefficient,
the norm-bias coefficient and target ``mu2`` (squared norm), the paper row it is compared with,
and the tables it enters (``normalize``: False = Table 2, inputs in [0, 1]; True = Table 3).

Weight-decay coefficients at ``paper``, from each architecture's original paper or code:
ResNet-18 1e-4 (He et al. 2016, CIFAR-10 experiments); DenseNet-40 1e-4 (Huang et al. 2017);
MobileNetV2 4e-5 (Sandler et al. 2018, ImageNet: it has no CIFAR setting); Fixup ResNet-20
1e-4 (default ``--decay`` of the Fixup reference code ``cifar/cifar_train.py``; we could not
check the Fixup paper's text for its CIFAR value); MLP 1e-4 (no original paper: the default
``--weight_decay`` of the official ``NormBias/main.py``). Norm-bias coefficients and ``mu2`` are
the paper's (MLP: our choice, mu2 about twice its initial squared norm of 2,052).

At ``cpu`` the small models' ``mu2`` follows the paper's rule (well above the squared norm the
weight-decay runs reach). A pilot without regularizer (5,000 images, 8 epochs, lr 0.1 divided
by 10 at epochs 4 and 6, seed 0) ended at a squared norm of ~915 for ResNet-18 width 1/8 (805 at
init) and ~642 for the 512-wide MLP (517 at init); weight decay 1e-4 can only shrink the squared
norm by about ``2 * lr * coef / (1 - momentum) = 0.02%`` per step, a few percent over the run.
``mu2`` is about twice the pilot's end value: 2,000 and 1,300. The chapter checks the rule on the
stored runs (weight-decay end norm / mu2). Fixup ResNet-20 is the paper's own model and keeps
the paper's 1,000 / 0.0005.
"""

_RESNET18 = {"paper_row": "ResNet-18", "model": "resnet18", "model_kw": {}}
_DENSENET = {"paper_row": "DenseNet-40", "model": "densenet40", "model_kw": {}}
_MOBILENET = {"paper_row": "MobileNetV2", "model": "mobilenetv2", "model_kw": {}}
_FIXUP = {"paper_row": "ResNet-20 Fixup", "model": "resnet20_fixup", "model_kw": {}}
# Fixup ResNet-20 is the paper's own model: the same row (paper values) at cpu and paper.
_FIXUP_ROW = {**_FIXUP, "weight_decay": 1e-4, "norm_bias_coef": 0.0005, "mu2": 1000.0,
              "normalize": [True]}  # fmt: skip
_MLP = {"paper_row": "MLP", "model": "mlp", "model_kw": {"widths": [2048, 2048, 2048]}}

PROFILES = {
    "smoke": {
        "datasets": ["cifar10_small"],  # first 2,000 train + 1,000 test images
        "n_train": 512,  # training images (None = all left after the held-out split)
        "n_holdout": 500,  # images of the training set held out for evaluation (never trained)
        "epochs": 2,  # passes over the training subset
        "lr": 0.1,  # initial SGD learning rate
        "milestones": [],  # epochs at which lr is divided by 10
        "batch_size": 128,  # images per step (CIFAR-10)
        "batch_size_cifar100": 256,  # images per step on CIFAR-100 (official code)
        "momentum": 0.9,  # SGD momentum
        "augment": True,  # random crop (pad 4) + horizontal flip
        "bf16": True,  # bf16 autocast for the training forward pass
        "form": "gradient",  # regularizer form: "gradient" (official) or "loss"
        "scope": "all",  # regularized parameters: "all" (official) or "no_bn_bias"
        "regularizers": ["none", "weight_decay", "norm_bias"],
        "models": {
            "resnet18_w16": {
                "paper_row": "ResNet-18",
                "model": "resnet18",
                "model_kw": {"width": 0.0625},
                "weight_decay": 1e-4,  # coefficient
                "norm_bias_coef": 0.005,
                "mu2": 800.0,  # target squared norm (~2x init)
                "normalize": [True],  # True: Table 3 (normalized inputs), False: Table 2
            },
            "mlp_64": {
                "paper_row": "MLP",
                "model": "mlp",
                "model_kw": {"widths": [64, 64, 64]},
                "weight_decay": 1e-4,
                "norm_bias_coef": 0.005,
                "mu2": 150.0,  # ~2x init
                "normalize": [False],  # not in the paper's Table 2: exercises that path
            },
        },
        "seeds": [0, 1],
    },
    "cpu": {
        "datasets": ["cifar10"],  # all 50,000 train images, first 1,000 test images offline
        "n_train": 4000,  # training images, drawn from the 45,000 not held out
        "n_holdout": 5000,  # held-out images of the training set (never trained on)
        "epochs": 6,  # 32 steps each
        "lr": 0.1,
        "milestones": [3, 5],  # lr / 10 at these epochs (paper: 1/3, 7/12, 3/4, 11/12 of 300)
        "batch_size": 128,
        "batch_size_cifar100": 256,
        "momentum": 0.9,
        "augment": True,
        "bf16": True,
        "form": "gradient",
        "scope": "all",
        "regularizers": ["none", "weight_decay", "norm_bias"],
        "models": {
            "resnet20_fixup": dict(_FIXUP_ROW),
            "resnet18_w8": {
                "paper_row": "ResNet-18",
                "model": "resnet18",
                "model_kw": {"width": 0.125},  # 176,402 parameters
                "weight_decay": 1e-4,
                "norm_bias_coef": 0.005,
                "mu2": 2000.0,  # ~2x the squared norm at the end of unregularized training
                "normalize": [True],
            },
            "mlp_512": {
                "paper_row": "MLP",
                "model": "mlp",
                "model_kw": {"widths": [512, 512, 512]},  # 2,103,818 parameters
                "weight_decay": 1e-4,
                "norm_bias_coef": 0.005,
                "mu2": 1300.0,  # ~2x the squared norm at the end of unregularized training
                "normalize": [True],
            },
        },
        "seeds": [0, 1, 2],
    },
    "paper": {
        "datasets": ["cifar10", "cifar100"],
        "n_train": None,  # all 50,000
        "n_holdout": 0,  # evaluate on the full test set only
        "epochs": 300,
        "lr": 0.1,
        "milestones": [100, 175, 225, 275],
        "batch_size": 128,
        "batch_size_cifar100": 256,
        "momentum": 0.9,
        "augment": True,
        "bf16": False,
        "form": "gradient",
        "scope": "all",
        "regularizers": ["none", "weight_decay", "norm_bias"],
        "models": {
            "resnet18": {
                **_RESNET18,
                "weight_decay": 1e-4,
                "norm_bias_coef": 0.005,
                "mu2": 2500.0,
                "normalize": [False, True],
            },  # fmt: skip
            "densenet40": {
                **_DENSENET,
                "weight_decay": 1e-4,
                "norm_bias_coef": 0.005,
                "mu2": 2500.0,
                "normalize": [False, True],
            },  # fmt: skip
            "mobilenetv2": {
                **_MOBILENET,
                "weight_decay": 4e-5,
                "norm_bias_coef": 0.001,
                "mu2": 5000.0,
                "normalize": [False, True],
            },  # fmt: skip
            "resnet20_fixup": dict(_FIXUP_ROW),
            "mlp": {
                **_MLP,
                "weight_decay": 1e-4,
                "norm_bias_coef": 0.005,
                "mu2": 4000.0,
                "normalize": [True],
            },  # fmt: skip
        },
        "seeds": list(range(10)),
    },
}
