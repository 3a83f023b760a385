"""One training loop for every chapter: ``fit`` (SGD + momentum, multi-step lr, optional
regularizer, optional adversarial examples, checkpoint/resume, divergence check) and ``evaluate``.

Conventions: images arrive as uint8 ``[N,3,32,32]`` and become [0, 1] floats per batch; the
model normalizes inside (``make_model(..., normalize=True)``). Training may use mixed precision
(``TrainConfig.bf16``: bf16 autocast, fp16 + gradient scaler on GPUs without bf16); measurements
elsewhere in ``bplib`` run in float32 (the NTK with TF32 off on GPUs: ``bplib.device``).

On CUDA, ``fit`` holds the uint8 data on the GPU and augments it there (offsets drawn on the CPU
generator: a seed gives the same batches on every device), runs conv nets in channels_last,
evaluates in large batches and may ``torch.compile`` the training forward. None of this is
active on a CPU, where results stay bit-identical to the code before the GPU path.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bplib.checks import check_choice, check_float, check_int
from bplib.data import augment, batches, to_float
from bplib.device import amp_dtype, eval_batch_size, uses_channels_last
from bplib.files import write_file
from bplib.results import CorruptFile


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exceeded ``TrainConfig.max_loss``; nothing garbage was stored."""


@dataclass
class TrainConfig:
    epochs: int  # passes over the training set
    lr: float  # initial SGD learning rate
    batch_size: int = 128  # images per step
    momentum: float = 0.9  # SGD momentum (heavy ball)
    weight_decay: float = 0.0  # coupled L2 coefficient inside SGD (torch convention)
    milestones: tuple[int, ...] = ()  # epochs at which lr is multiplied by gamma
    gamma: float = 0.1  # lr factor at each milestone
    augment: bool = False  # random crop (pad 4) + horizontal flip per batch
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    bf16: bool = False  # mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without bf16)
    grad_clip_value: float | None = None  # clamp each gradient entry (official rank code: 0.1)
    max_loss: float = 1e4  # a batch loss above this counts as divergence
    # Speed, not results (RUNTIME_FIELDS: not recorded, see recorded_config):
    channels_last: bool | None = None  # NHWC conv activations; None: on for conv nets on CUDA
    compile: bool = False  # torch.compile the training forward; CUDA only
    eval_batch_size: int | None = None  # images per eval batch; None: eval_batch_size(device)

    def __post_init__(self):
        check_int("epochs", self.epochs, low=0)
        check_float("lr", self.lr, low=0.0)
        check_int("batch_size", self.batch_size, low=1)
        check_float("momentum", self.momentum, low=0.0, high=1.0)
        check_float("weight_decay", self.weight_decay, low=0.0)
        check_int("eval_every", self.eval_every, low=1)
        self.milestones = tuple(self.milestones)
        for m in self.milestones:
            check_int("milestones", m, low=1)
        check_choice("channels_last", self.channels_last, (None, False, True))
        check_choice("compile", self.compile, (False, True))
        if self.eval_batch_size is not None:
            check_int("eval_batch_size", self.eval_batch_size, low=1)

    @classmethod
    def from_params(cls, params: dict, **overrides) -> TrainConfig:
        """A config from a chapter's parameter dict: the keys that name a field are taken,
        other keys are ignored; ``overrides`` win over ``params``."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in params.items() if k in names}, **overrides})

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during ``epoch`` (0-based)."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)


RUNTIME_FIELDS = ("channels_last", "compile", "eval_batch_size")


def recorded_config(cfg: TrainConfig) -> dict:
    """The config as histories and checkpoints record it: without :data:`RUNTIME_FIELDS`, which
    change speed, not results (records stay as before them; a resume may change them)."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS}


def squared_norm(model: nn.Module) -> float:
    """sum_i phi_i^2 over all trainable parameters (the paper's ||theta||^2)."""
    with torch.no_grad():
        return float(sum(p.double().pow(2).sum() for p in model.parameters() if p.requires_grad))


def _eval_batches(model, x, y, adversary, batch_size):
    """Batches of ``x`` as [0, 1] floats on the model's device, attacked by ``adversary`` when
    given (the attack gets gradients; the caller's evaluation does not)."""
    device = next(model.parameters()).device
    for xb, yb in batches(x, y, eval_batch_size(device, adversary is not None, batch_size)):
        xb, yb = to_float(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True)
        if adversary is not None:
            with torch.enable_grad():
                xb = adversary(model, xb, yb)
        yield xb, yb


@torch.no_grad()
def evaluate(model, x, y, batch_size: int | None = None, bf16: bool = False, adversary=None):
    """(mean cross-entropy, accuracy in %) of ``model`` in eval mode; optionally on adversarial
    examples ``adversary(model, x01, y)``. ``batch_size`` None: :func:`eval_batch_size` of the
    model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct: one read
    dtype = amp_dtype(device)
    for xb, yb in _eval_batches(model, x, y, adversary, batch_size):
        with torch.autocast(device.type, dtype, enabled=bf16):
            out = model(xb).float()
        loss = nn.functional.cross_entropy(out, yb, reduction="sum")
        sums += torch.stack([loss, (out.argmax(1) == yb).sum()]).to(sums)
    model.train(was_training)
    total_loss, correct = sums.tolist()
    return total_loss / len(x), 100.0 * correct / len(x)


@torch.no_grad()
def correct(model, x, y, adversary=None, batch_size: int | None = None) -> torch.Tensor:
    """Boolean ``[N]`` on ``x``'s device: is each (optionally attacked) image of the uint8
    batch ``x`` classified correctly, in eval mode and float32? The one per-image evaluation loop
    (paired comparisons need the per-image outcome, not just the accuracy)."""
    was_training = model.training
    model.eval()
    out = [
        model(xb).argmax(1) == yb for xb, yb in _eval_batches(model, x, y, adversary, batch_size)
    ]
    model.train(was_training)
    device = next(model.parameters()).device
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=device)


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    eval_sets: dict | None = None,
    regularizer=None,
    adversary=None,
    on_epoch_end=None,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` in place with SGD and return its per-epoch history.

    - ``eval_sets``: ``{"test": (x, y), ...}``; accuracy/loss recorded every ``eval_every`` epochs.
    - ``regularizer``: object with ``loss(model) -> tensor`` (added to the batch loss) and/or
      ``after_backward(model)`` (edits gradients, e.g. the official norm-bias gradient form).
    - ``adversary(model, x01, y) -> x01_adv``: replaces each training batch (adversarial training).
    - ``on_epoch_end(model, epoch) -> dict | None``: e.g. rank projections or NTK snapshots;
      returned values are appended to ``history["hooks"]``.
    - ``run_dir``: a checkpoint is written there after every epoch; if one exists, training
      resumes from it and ends with the same parameters as an uninterrupted run.
    Raises :class:`TrainingDiverged` at the end of an epoch in which a batch loss was NaN/inf or
    above ``cfg.max_loss`` (the last good checkpoint stays; nothing of that epoch is recorded).
    Loss and accuracy are summed on the device and read once per epoch: no per-step host sync
    (but the fp16 gradient scaler's check on GPUs without bf16). On CUDA data moves there once.
    """
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    step = _Step(model, opt, cfg, regularizer)  # refuses compile on a CPU before any work
    eval_sets, scaler = eval_sets or {}, step.scaler
    if step.device.type == "cuda":  # one copy, not one per batch; a no-op when already there
        x_train, y_train = x_train.to(step.device), y_train.to(step.device)
        eval_sets = {k: (x.to(step.device), y.to(step.device)) for k, (x, y) in eval_sets.items()}
    gen = torch.Generator().manual_seed(seed)  # batch order and augmentation draws
    torch.manual_seed(seed)  # anything else random inside the model (dropout, attack starts)
    history, start_epoch = _new_history(cfg, seed, eval_sets), 0
    ckpt = Path(run_dir) / "checkpoint.pt" if run_dir is not None else None
    if ckpt is not None and ckpt.exists():
        history, start_epoch = _resume(ckpt, model, opt, gen, cfg, seed, scaler)
    elif ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)

    bar = tqdm(range(start_epoch, cfg.epochs), disable=not progress, desc="epochs", leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(epoch)
        steps = batches(x_train, y_train, cfg.batch_size, gen)
        loss, acc = _train_epoch(step, steps, gen, adversary, epoch)
        for key, value in (("epoch", epoch + 1), ("lr", cfg.lr_at(epoch)),
                           ("train_loss", loss), ("train_acc", acc),
                           ("sq_norm", squared_norm(model))):  # fmt: skip
            history[key].append(value)
        if on_epoch_end is not None:
            history["hooks"].append(on_epoch_end(model, epoch + 1))
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            _evaluate_sets(model, eval_sets, history["eval"], epoch + 1, cfg)
        history["epoch_time_s"].append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.1f}")
        if ckpt is not None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
            state.update(generator=gen.get_state(), torch_rng=torch.get_rng_state())
            if scaler is not None:  # fp16 only: its loss scale, for an exact resume
                state["grad_scaler"] = scaler.state_dict()
            state.update(history=history, config=recorded_config(cfg), seed=seed)
            # Atomic, a unique temporary name (two runs never share one), removed on error, which
            # names the checkpoint (torch's own full-disk error names no file).
            write_file(ckpt, lambda tmp, state=state: torch.save(state, tmp), "checkpoint")
    return history


def _new_history(cfg: TrainConfig, seed: int, eval_sets: dict) -> dict:
    keys = ("epoch", "lr", "train_loss", "train_acc", "sq_norm", "epoch_time_s", "hooks")
    history = {k: [] for k in keys}
    history["eval"] = {k: {"epoch": [], "loss": [], "acc": []} for k in eval_sets}
    return {**history, "config": recorded_config(cfg), "seed": seed}


_CHECKPOINT_KEYS = ("model", "optimizer", "generator", "torch_rng", "history", "epoch",
                    "config", "seed")  # fmt: skip


def _resume(ckpt: Path, model, opt, gen, cfg: TrainConfig, seed: int, scaler) -> tuple[dict, int]:
    """Load a checkpoint of the same recorded config and seed into model, optimizer, generators
    and gradient scaler; return (history so far, first epoch to run)."""
    device = next(model.parameters()).device
    todo = f"delete it (or its run_dir={str(ckpt.parent)!r}) to train from epoch 0"
    try:
        state = torch.load(ckpt, map_location=device, weights_only=False)
    except (OSError, MemoryError, torch.OutOfMemoryError):  # not the file's fault
        raise
    except Exception as err:  # EOFError, RuntimeError (bad zip), UnpicklingError, ...
        raise CorruptFile(ckpt, "checkpoint", f"{type(err).__name__}: {err}", todo) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CorruptFile(ckpt, "checkpoint", f"missing key(s) {', '.join(missing)}", todo)
    if state["config"] != recorded_config(cfg) or state["seed"] != seed:
        raise ValueError(
            f"run_dir={str(ckpt.parent)!r} holds a checkpoint of a different "
            "config or seed; use another run_dir or delete it"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if scaler is not None and "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    print(f"resuming from {ckpt} after epoch {state['epoch'] + 1}", file=sys.stderr)
    return state["history"], state["epoch"] + 1


class _Step:
    """One SGD step on a batch of [0, 1] floats (forward in the configured precision, compiled
    when asked; backward; regularizer and clipping hooks; update) -> (loss, logits) on device."""

    def __init__(self, model, opt, cfg: TrainConfig, regularizer):
        self.model, self.opt, self.cfg, self.regularizer = model, opt, cfg, regularizer
        self.device = device = next(model.parameters()).device
        if cfg.compile and device.type != "cuda":
            msg = f"TrainConfig.compile=True is for CUDA models only (this one is on {device})"
            raise ValueError(msg + "; set compile=False, or move the model to a GPU")
        self.dtype = amp_dtype(device)  # once: on CUDA it asks the driver
        self.channels_last = uses_channels_last(model, device, cfg.channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # in place, like .to(device)
        fp16 = cfg.bf16 and self.dtype == torch.float16  # fp16 needs scaling against underflow
        self.scaler = (torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler")
                       else torch.cuda.amp.GradScaler()) if fp16 else None  # fmt: skip
        # Shares the parameters; eval, attacks and hooks call the eager model (no recompiles).
        self.forward = torch.compile(model) if cfg.compile else model

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor):
        cfg, regularizer, scaler = self.cfg, self.regularizer, self.scaler
        with torch.autocast(self.device.type, self.dtype, enabled=cfg.bf16):
            out = self.forward(xb)
        loss = nn.functional.cross_entropy(out.float(), yb)
        total = loss + regularizer.loss(self.model) if hasattr(regularizer, "loss") else loss
        self.opt.zero_grad(set_to_none=True)
        if scaler is None:
            total.backward()
        else:  # fp16: scaled against underflow, unscaled before the hooks see the gradients
            scaler.scale(total).backward()
            scaler.unscale_(self.opt)
        if hasattr(regularizer, "after_backward"):
            regularizer.after_backward(self.model)
        if cfg.grad_clip_value is not None:
            nn.utils.clip_grad_value_(self.model.parameters(), cfg.grad_clip_value)
        if scaler is None:
            self.opt.step()
        else:  # skips the update on inf/NaN gradients (reads one flag: a host sync per step)
            scaler.step(self.opt)
            scaler.update()
        return loss, out


def _train_epoch(step: _Step, steps, gen, adversary, epoch) -> tuple[float, float]:
    """One pass of SGD over ``steps``; (mean batch loss, accuracy in %) read once at the end."""
    model, cfg, device = step.model, step.cfg, step.device
    model.train()
    # Summed on the device (float64 where the device has it): one host read per epoch.
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    sums = torch.zeros(2, dtype=acc_dtype, device=device)  # sum of loss * images, correct
    seen = 0  # images (known on the host)
    worst = torch.zeros((), device=device)  # largest batch loss; NaN propagates through maximum
    for xb, yb in steps:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if cfg.augment:
            xb = augment(xb, gen)
        if step.channels_last:  # the attack's passes profit too; uint8: the cheapest copy
            xb = xb.contiguous(memory_format=torch.channels_last)
        xb = to_float(xb)
        if adversary is not None:
            xb = adversary(model, xb, yb)
        loss, out = step(xb, yb)
        with torch.no_grad():
            worst = torch.maximum(worst, loss.detach())
            sums += torch.stack([loss.detach() * len(yb), (out.argmax(1) == yb).sum()]).to(sums)
        seen += len(yb)
    loss_sum, correct = sums.tolist()
    worst = worst.item()
    if not math.isfinite(worst) or worst > cfg.max_loss:
        raise TrainingDiverged(
            f"loss {worst:.4g} in epoch {epoch} (lr {cfg.lr_at(epoch)}); max_loss={cfg.max_loss}."
            " Nothing of this epoch was recorded."
        )
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def _evaluate_sets(model, eval_sets: dict, out: dict, epoch: int, cfg: TrainConfig) -> None:
    """Append (epoch, loss, accuracy) of every evaluation set to ``out[name]``."""
    for name, (xe, ye) in eval_sets.items():
        loss_e, acc_e = evaluate(model, xe, ye, cfg.eval_batch_size, bf16=cfg.bf16)
        for key, value in (("epoch", epoch), ("loss", loss_e), ("acc", acc_e)):
            out[name][key].append(value)
