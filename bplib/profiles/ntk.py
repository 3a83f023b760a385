"""Profiles of chapter 3 (neural tangent kernel vs. width, Figure 1, skip x batch norm).

Widths are per family: MLP hidden units ``w`` (``mlp2``: 3072-w-10, ``mlp4``: 3072-w-w-w-10),
ConvNet channels ``w`` (layers w, 2w, 2w, 4w, 4w), WRN-16-``k``, ResNet-18 channel multiplier
(1 = 64, 128, 256, 512 channels) for all four skip x batch-norm variants.
"""

_RESNETS = ("resnet18", "resnet18_noskip", "resnet18_nobn", "resnet18_noskip_nobn")

PROFILES = {
    "smoke": {
        "seeds": [0],
        "dataset": "cifar10_small",  # first 2,000 CIFAR-10 training images
        "n_train": 256,  # training images (the first n of the training set)
        "epochs": 1,  # passes over the n_train images
        "lr": 0.01,  # SGD learning rate
        "batch_size": 128,  # images per step
        "momentum": 0.9,  # SGD momentum
        "weight_decay": 5e-4,  # coupled L2 coefficient
        "milestones": [],  # epochs where lr is multiplied by gamma
        "gamma": 0.2,  # lr factor at each milestone
        "bf16": True,  # bf16 autocast for training (the NTK itself is float32)
        "n_images": 5,  # images in the NTK sample (kernel is 10 n x 10 n)
        "samples": ["random", "official"],  # image samples measured (first = the main one)
        "explorer_images": 5,  # images of the stored kernels for the explorer (float16)
        "max_elems": 2**24,  # largest Jacobian block held at once (numbers)
        "widths": {
            "mlp2": [16, 64],
            "mlp4": [16, 64],
            "convnet": [2, 4],
            "wrn16": [1],
            **{f: [1 / 32, 1 / 16] for f in _RESNETS},
        },
        "trajectory_family": "convnet",  # the model whose NTK is tracked during training
        "trajectory_width": 4,
        "trajectory_epochs": 2,  # epochs of the tracked run (NTK after each)
        "jobs": 1,  # parallel 1-thread processes (map_jobs)
        "min_train_acc": 0.0,  # % training accuracy a run needs to count in the width trend
    },
    "cpu": {
        "seeds": [0, 1],  # 2 seeds: ~9 min each on 2 cores
        "dataset": "cifar10",
        "n_train": 512,
        "epochs": 12,  # 48 SGD steps: a few minutes for all 37 nets on 2 cores
        "lr": 0.05,  # 5x the paper's, so that so few steps move the nets away from init
        "batch_size": 128,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": [],
        "gamma": 0.2,
        "bf16": True,
        "n_images": 25,
        "samples": ["random", "official"],
        "explorer_images": 10,
        "max_elems": 2**28,  # 1 GiB float32 blocks per process
        "widths": {
            "mlp2": [8, 32, 128, 512, 2048],  # 25k .. 6.3M parameters
            "mlp4": [8, 32, 128, 512, 1024],  # 25k .. 5.3M
            "convnet": [2, 4, 8, 16, 32],  # 1.9k .. 0.29M
            "wrn16": [1, 2, 3, 4],  # 0.18M .. 2.75M (k must be an integer)
            **{f: [1 / 32, 1 / 16, 1 / 8, 1 / 4] for f in _RESNETS},  # 11k .. 0.70M
        },
        "trajectory_family": "convnet",
        "trajectory_width": 16,
        "trajectory_epochs": 12,
        "jobs": 2,
        "min_train_acc": 20.0,  # chance 10%, majority class of the 512 images 12.9%
    },
    "paper": {
        "seeds": [0],
        "dataset": "cifar10",
        "n_train": 50000,  # the whole training set
        "epochs": 200,
        "lr": 0.01,
        "batch_size": 128,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": [60, 120, 160],
        "gamma": 0.2,
        "bf16": False,  # the official code trains in float32
        "n_images": 25,
        "samples": ["random", "official"],
        "explorer_images": 10,
        "max_elems": 2**30,  # 4 GiB blocks on a large GPU
        "widths": {  # at least two orders of magnitude of parameters per family
            "mlp2": [32, 128, 512, 2048, 8192],  # 0.1M .. 25M parameters
            "mlp4": [32, 128, 512, 2048],  # 0.1M .. 14.7M
            "convnet": [4, 8, 16, 32, 64, 128],  # 5k .. 4.5M
            "wrn16": [1, 2, 4, 8, 10],  # 0.18M .. 17M
            **{f: [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1] for f in _RESNETS},  # 45k .. 11M
        },
        "trajectory_family": "convnet",
        "trajectory_width": 64,
        "trajectory_epochs": 200,
        "jobs": 1,
        "min_train_acc": 20.0,
    },
}
