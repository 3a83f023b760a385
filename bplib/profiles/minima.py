"""Sizes of chapter 1 (local minima, Table 1). Same keys in every profile; units in comments."""

_COMMON = {
    "lr": 0.01,  # SGD learning rate, all five rows (paper and official code)
    "batch_size": 128,  # images per SGD step
    "momentum": 0.4,  # official job_local_optima.py --mom default; 0 for the no-momentum row
    "weight_decay": 5e-4,  # coupled L2 in SGD; also in grad_norm_wd and the Hessian (H + wd I)
    "gamma": 0.1,  # lr factor at each milestone
    "linear_lr": 0.01,  # SGD lr of the linear classifier embedded by Lemma 1
    "linear_momentum": 0.9,  # official job_optima_from_subnets.py
    "linear_weight_decay": 5e-4,  # paper: with weight decay (official code: 0.0); a parameter
    "offset_margin": 1.0,  # smallest pre-activation on the training set after Lemma 1 (units of z)
    "measure_dtype": "float32",  # dtype of loss / gradient / Hessian measurements (never bf16)
    "bf16": False,  # fp32 training: on this CPU bf16 is not faster for these MLPs
    "power_iters": 500,  # paper: 500 power iterations (per run; two runs: max, then shifted)
    "lanczos_tol": 1e-4,  # ARPACK tolerance; min eigenvalue accurate to ~ tol * |lambda_max|
    "lanczos_ncv": 30,  # Lanczos basis size
    "lanczos_max_hvp": 1500,  # cap on Hessian-vector products per eigsh call (two calls)
}

PROFILES = {
    "smoke": {
        **_COMMON,
        "dataset": "cifar10_small",  # first 2,000 train / 1,000 test images
        "widths": (16, 16, 12),  # hidden widths of the MLP 3072-w1-w2-w3-10 (>= 10 for Lemma 1)
        "epochs": 2,  # SGD epochs for every row
        "milestones": (),  # epochs where lr *= gamma
        "linear_epochs": 2,  # epochs of the linear classifier before embedding
        "linear_milestones": (),
        "linear_lbfgs_iters": 10,  # full-batch L-BFGS iterations after SGD (0: none)
        "hessian_images": 100,  # Hessian on the FIRST n training images (None: all)
        "eig_method": "lanczos",  # lanczos | power (paper)
        "compare_power_iters": 10,  # power iterations for the Lanczos-vs-power check (0: skip)
        "seeds": [0],
    },
    "cpu": {
        **_COMMON,
        "dataset": "cifar10",  # all 50,000 training images; offline test = first 1,000
        "widths": (64, 64, 32),
        "epochs": 40,  # 10 epochs left the default row at 45% train accuracy, far from a minimum
        "milestones": (13, 22, 31),  # the paper's 150/250/350 of 450, scaled
        "linear_epochs": 3,
        "linear_milestones": (2,),
        "linear_lbfgs_iters": 200,  # preconditioned; SGD alone leaves it far from its minimum
        "hessian_images": 1000,  # the first 1,000 CIFAR-10 training images
        "eig_method": "lanczos",
        "compare_power_iters": 500,  # on the trained default-init net of the first seed
        "seeds": [0, 1],
    },
    "paper": {
        **_COMMON,
        "dataset": "cifar10",
        "widths": (2048, 2048, 1024),  # 12,598,282 parameters
        "epochs": 450,
        "milestones": (150, 250, 350),
        "linear_epochs": 800,  # official job_optima_from_subnets.py
        "linear_milestones": (50, 200, 400, 600, 700),
        "linear_lbfgs_iters": 0,  # the paper: SGD only
        "hessian_images": None,  # full training set
        "eig_method": "power",
        "compare_power_iters": 500,
        "seeds": [0, 1, 2],
    },
}
