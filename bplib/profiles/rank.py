"""Sizes of the rank chapter (paper section 4, Table 4, Figure 2); the paper's numbers are
``bplib.paper.TABLE4``.

Every profile trains CIFAR ResNet-18 with and without skip connections (``skips``) in six
ways (``bplib.claims.rank.ROWS``): natural, RankMax, RankMin, adversarial, RankMaxAdv, RankMinAdv.
Pixel budgets (``*_eps``, ``*_alpha``) are in [0, 1] pixel units. Epoch numbers are 1-based:
``rank_epochs=(2, 4)`` projects at the end of the 2nd and 4th epochs; a milestone ``m`` means the
lr drops from epoch ``m + 1`` on (epoch index ``m`` 0-based, as ``TrainConfig.lr_at``).
"""

PROFILES = {
    "smoke": {
        "dataset": "cifar10_small",  # first 2,000 train / 1,000 test images
        "skips": [True, False],  # ResNet-18 with skips, Skipless ResNet-18
        "width": 1 / 16,  # channel multiplier: 4, 8, 16, 32 channels
        "n_train": 128,  # training images (after the held-out split)
        "n_holdout": 200,  # held-out split of the training set (images)
        "n_robust": 20,  # test images attacked for robust accuracy
        "epochs": 2,
        "lr": 0.05,  # SGD learning rate
        "batch_size": 128,  # images per step
        "momentum": 0.9,
        "weight_decay": 2e-4,  # official Rank_study code
        "milestones": [1],  # epochs after which lr *= gamma
        "gamma": 0.1,
        "augment": True,  # random crop (pad 4) + flip
        "bf16": True,  # bf16 autocast for training and the training attack
        "grad_clip_value": 0.1,  # per-entry gradient clamp of the official code
        "rank_epochs": [1],  # projection after these epochs (1-based)
        "rankmin_threshold": 0.5,  # RankMin: singular values below -> 0 (official)
        "rankmax_ceiling": 1.5,  # RankMax: singular values clipped to this (official)
        "train_eps": 8 / 255,  # adversarial training radius (pixels)
        "train_alpha": 2 / 255,  # adversarial training step (pixels)
        "train_steps": 2,  # PGD steps in adversarial training (smoke: 2, not 7)
        "train_attack_mode": "current",  # BN mode during the training attack: train (as official)
        "eval_eps": [8 / 255, 1 / 255],  # robust-accuracy radii (pixels)
        "eval_steps": 2,  # PGD steps at evaluation (smoke: 2, not 20)
        "eval_alpha_frac": 0.25,  # evaluation step = eps / 4 (official: 0.25/255 at eps 1/255)
        "num_quantiles": 200,  # stored order statistics of each layer's spectrum
        "jobs": 1,  # worker processes (1 = in-process: no start-up cost)
        "seeds": [0],
    },
    "cpu": {
        "dataset": "cifar10",  # all 50,000 train images; test = first 1,000 offline
        "skips": [True, False],
        "width": 1 / 8,  # 8, 16, 32, 64 channels (~176k parameters)
        "n_train": 4000,  # training images (after the held-out split)
        "n_holdout": 2000,  # held-out split of the training set (images)
        "n_robust": 500,  # first 500 test images attacked (20-step PGD, fp32)
        "epochs": 6,
        "lr": 0.05,  # higher than the paper's 0.01: only 6 epochs of 32 steps
        "batch_size": 128,
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "milestones": [4],  # lr 0.005 in epochs 5-6
        "gamma": 0.1,
        "augment": True,
        "bf16": True,
        "grad_clip_value": 0.1,
        "rank_epochs": [2, 4],  # two projections; 2 epochs of training follow the last one
        "rankmin_threshold": 0.5,
        "rankmax_ceiling": 1.5,
        "train_eps": 8 / 255,
        "train_alpha": 2 / 255,
        "train_steps": 7,  # as the paper
        "train_attack_mode": "current",
        "eval_eps": [8 / 255, 1 / 255],
        "eval_steps": 20,  # as the paper
        "eval_alpha_frac": 0.25,
        "num_quantiles": 200,
        "jobs": 2,  # two 1-thread processes on 2 cores
        "seeds": [0],  # one seed per row fits the 15-minute budget
    },
    "paper": {
        "dataset": "cifar10",  # the final paper also trains naturally on cifar100
        "skips": [True, False],
        "width": 1.0,  # 11,173,962 parameters (with skips)
        "n_train": None,  # all 50,000 training images
        "n_holdout": 0,  # no held-out split: the full 10,000-image test set is used
        "n_robust": None,  # every test image is attacked
        "epochs": 200,
        "lr": 0.01,
        "batch_size": 128,
        "momentum": 0.9,
        "weight_decay": 2e-4,  # official code (the paper does not state it)
        "milestones": [100, 150, 175, 190],
        "gamma": 0.1,
        "augment": True,
        "bf16": False,
        "grad_clip_value": 0.1,  # official code (the paper does not state it)
        # The paper states no schedule. The official defaults project right after the first
        # epoch at each lowered lr (rank_sched = lr_schedule = 15 30 40, 0-based); same here.
        "rank_epochs": [101, 151, 176, 191],
        "rankmin_threshold": 0.5,
        "rankmax_ceiling": 1.5,
        "train_eps": 8 / 255,  # final paper (official code: 4/255)
        "train_alpha": 2 / 255,  # final paper (official code: 1/255)
        "train_steps": 7,
        "train_attack_mode": "current",
        "eval_eps": [8 / 255, 1 / 255],
        "eval_steps": 20,
        "eval_alpha_frac": 0.25,
        "num_quantiles": 200,
        "jobs": 1,  # one GPU
        "seeds": [0, 1, 2],
    },
}
