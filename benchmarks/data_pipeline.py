"""Training throughput: our uint8-tensor pipeline vs the official code's torchvision pipeline.

Ours: uint8 [N,3,32,32] tensor -> batched crop/flip tensor ops -> [0,1] floats -> model with a
Normalize first layer. Official: a Dataset with torchvision's CIFAR10 layout (.data HWC uint8,
.targets) returning PIL images through RandomCrop(32, 4), RandomHorizontalFlip, ToTensor,
Normalize, batched by a DataLoader. Both train the same model with the same SGD step (bf16
autocast, batch 128) for the same number of steps. Run:

    python benchmarks/data_pipeline.py [--steps 30] [--workers 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from bplib.data import CIFAR10_MEAN, CIFAR10_STD, augment, batches, load_cifar, to_float
from bplib.models import make_model


class NpzCifar(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__ on arrays (it cannot read the offline npz)."""

    def __init__(self, data, targets, transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), int(self.targets[i])


def step_fn(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        with torch.autocast("cpu", torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(batch_iter, step, steps: int, warmup: int = 3) -> float:
    """Images per second over ``steps`` training steps after ``warmup`` steps."""
    it = iter(batch_iter)
    for _ in range(warmup):
        step(*next(it))
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        seen += len(y)
    return seen / (time.perf_counter() - start)


def ours(d, gen):
    for xb, yb in batches(d.x_train, d.y_train, 128, gen, drop_last=True):
        yield to_float(augment(xb, gen)).contiguous(memory_format=torch.channels_last), yb


def official(d, workers: int):
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    ds = NpzCifar(d.x_train.permute(0, 2, 3, 1).numpy(), d.y_train.numpy(), tf)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=128,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    for xb, yb in loader:
        yield xb.contiguous(memory_format=torch.channels_last), yb


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (official)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = load_cifar("cifar10")
    print(
        f"data: {d.source}; batch 128, bf16 autocast, {args.threads} thread(s), "
        f"{args.workers} DataLoader worker(s) for the official pipeline"
    )
    print(f"{'model':<28}{'ours img/s':>12}{'official img/s':>16}{'ratio':>8}")
    for name, kw in (("mlp", {"widths": (1024,)}), ("resnet18", {"width": 0.125})):
        torch.manual_seed(0)
        net_ours = make_model(name, **kw).to(memory_format=torch.channels_last)
        net_official = make_model(name, normalize=False, **kw).to(memory_format=torch.channels_last)
        net_official.load_state_dict(net_ours[1].state_dict())
        a = timed(ours(d, torch.Generator().manual_seed(0)), step_fn(net_ours), args.steps)
        b = timed(official(d, args.workers), step_fn(net_official), args.steps)
        label = f"{name} {kw}"
        print(f"{label:<28}{a:>12.0f}{b:>16.0f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
