"""Training throughput and CPU cost: our uint8-tensor pipeline vs the official torchvision one.

Ours: uint8 [N,3,32,32] tensor -> batched crop/flip tensor ops -> [0,1] floats -> model with a
Normalize first layer, all in the training process (on a GPU: the data set and the augmentation
on the GPU). Official: a Dataset with torchvision's CIFAR10 layout (.data HWC uint8, .targets)
returning PIL images through RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize,
batched by a DataLoader with worker processes. Both train the same model with the same SGD step
(mixed-precision autocast, batch 128) for the same number of steps, in one side-by-side run.

Two measures per pipeline, over the same timed steps (after warm-up steps):
- wall img/s: images trained per second of wall-clock time;
- CPU core-ms per image: CPU time (user + system) of this process and of its child processes
  (the DataLoader workers, via psutil) per image, in milliseconds. A pipeline that keeps two
  worker processes busy can look as fast on the wall clock while using twice the cores.

It prints a Markdown table ready for the README. Run on a quiet machine:

    python benchmarks/data_pipeline.py [--steps 100] [--workers 2] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from bplib.data import CIFAR10_MEAN, CIFAR10_STD, augment, batches, load_cifar, to_float
from bplib.device import amp_dtype, set_threads
from bplib.models import make_model

MODELS = {"mlp": ("MLP 3072-1024-10", {"widths": (1024,)}),
          "resnet18": ("ResNet-18, width 1/8", {"width": 0.125})}  # fmt: skip


class NpzCifar(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__ on arrays (it cannot read the offline npz)."""

    def __init__(self, data, targets, transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), int(self.targets[i])


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live child processes, in seconds."""
    try:
        import psutil
    except ImportError:  # a dependency of ipython and distributed, so usually present
        raise SystemExit("benchmarks/data_pipeline.py needs psutil: pip install psutil") from None
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:  # a worker that just ended
            continue
    return total


def step_fn(model, device: torch.device):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        with torch.autocast(device.type, amp_dtype(device)):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(batch_iter, step, steps: int, warmup: int, device: torch.device) -> dict:
    """Wall img/s and CPU core-ms per image over ``steps`` training steps after ``warmup``.

    With DataLoader workers the window is in steady state: the workers prefetch a fixed number of
    batches ahead, so the batches they prepare inside the window are about the ones trained."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it = iter(batch_iter)
    for _ in range(warmup):
        step(*next(it))
    sync()
    cpu0, start, seen = cpu_seconds(), time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        seen += len(y)
    sync()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return {"img_s": seen / wall, "cpu_ms_per_img": 1000 * cpu / seen}


def ours(d, gen, device: torch.device):
    x, y = d.x_train.to(device), d.y_train.to(device)  # on a GPU: held there once
    for xb, yb in batches(x, y, 128, gen, drop_last=True):
        yield to_float(augment(xb, gen)).contiguous(memory_format=torch.channels_last), yb


def official(d, workers: int, device: torch.device):
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
        pin_memory=device.type == "cuda",
    )
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        yield xb.contiguous(memory_format=torch.channels_last), yb


def markdown(rows: list[dict]) -> str:
    """The README table: one line per (model, device)."""
    head = ("| model | device | ours (img/s) | official (img/s) | wall ratio "
            "| ours (CPU core-ms/img) | official (CPU core-ms/img) | CPU ratio |")  # fmt: skip
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        a, b = r["ours"], r["official"]
        lines.append(
            f"| {r['label']} | {r['device']} | {a['img_s']:,.0f} | {b['img_s']:,.0f} "
            f"| {a['img_s'] / b['img_s']:.2f} | {a['cpu_ms_per_img']:.3f} "
            f"| {b['cpu_ms_per_img']:.3f} | {b['cpu_ms_per_img'] / a['cpu_ms_per_img']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (official)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--device", default=None, help="cpu, cuda (default: both where CUDA exists)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar10_small"))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    devices = [args.device] if args.device else ["cpu"] + ["cuda"] * torch.cuda.is_available()
    d = load_cifar(args.dataset)
    print(
        f"data: {d.source}; batch 128, mixed-precision autocast, {args.threads} torch thread(s), "
        f"{args.workers} DataLoader worker(s) for the official pipeline; {args.warmup} warm-up "
        f"and {args.steps} timed steps each; CPU time of this process and its children"
    )
    rows = []
    for device in map(torch.device, devices):
        for name in args.models:
            label, kw = MODELS[name]
            torch.manual_seed(0)
            fmt = torch.channels_last
            net_ours = make_model(name, **kw).to(device, memory_format=fmt)
            net_official = make_model(name, normalize=False, **kw).to(device, memory_format=fmt)
            net_official.load_state_dict(net_ours[1].state_dict())
            gen = torch.Generator().manual_seed(0)
            row = {"label": label, "device": device.type}
            pipelines = {"ours": (ours(d, gen, device), net_ours),
                         "official": (official(d, args.workers, device), net_official)}  # fmt: skip
            for key, (it, net) in pipelines.items():  # created lazily: one at a time
                row[key] = timed(it, step_fn(net, device), args.steps, args.warmup, device)
                it.close()  # ends the DataLoader's workers before the next measurement
            rows.append(row)
            print(f"{label} on {device.type}: {row}", flush=True)
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
