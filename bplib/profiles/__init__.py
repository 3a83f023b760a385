"""The four profiles of every chapter, in one place: ``smoke`` (seconds per chapter on a CPU;
CI, tests and every parameters cell's default), ``cpu`` (the paper's qualitative claim on 2 CPU
cores), ``paper`` (the paper's stated hyperparameters, for a GPU) and ``gpu`` (the ``cpu``
design at the sizes one GPU affords in about an hour: the paper's networks, more data, epochs
and seeds; issue 26). Each claim's module here is written as CONTRIBUTING.md's recipe says
(``PAPER`` in full, the others as the keys they change, ``DRYRUN``). :func:`get_profile` returns
one with a chapter's overrides applied, after checking their names, values and sizes. Where a
run happens is :class:`bplib.runner.Context`'s.
"""

from __future__ import annotations

import ast
import importlib
import math
import numbers
import sys
from types import SimpleNamespace

from bplib.checks import check_choice, check_seeds
from bplib.registry import CLAIMS

PROFILE_NAMES = ("smoke", "cpu", "paper", "gpu")
# The profiles a dry run (2 batches per training phase, DRYRUN) cuts down: the two for a GPU.
DRYRUN_PROFILES = ("paper", "gpu")
CHAPTERS = CLAIMS  # the registry is the only list of claims

# Sizes whose 0 makes no sense: every number in them must be > 0 (integers: >= 1). A 0 there
# used to fail deep inside a job (epochs=0: IndexError in the NTK and weight-decay chapters,
# untrained nets labelled "trained" in minima) or to mean something else silently
# (hessian_images=0 is read as "all images"; n_robust=0 averages nothing). Counts where 0 means
# "none" stay out: n_holdout (no held-out split), linear_lbfgs_iters (no L-BFGS),
# compare_power_iters (no comparison). ``width``/``widths`` hold the (float) channel multipliers
# too. Every other number must be >= 0. None still means "take the profile's value".
POSITIVE = frozenset({
    "epochs", "batch_size", "batch_size_cifar100", "n_train", "n_images", "n_robust",
    "linear_epochs", "n_test", "train_steps", "eval_steps", "power_iters",
    "lanczos_ncv", "lanczos_max_hvp", "hessian_images", "explorer_images", "num_quantiles",
    "max_elems", "width", "widths", "trajectory_width",
})  # fmt: skip

# Percentages and accuracy points (gates, margins): every number in them lies in 0..100; an
# ntk min_train_acc=250 used to be reported as "0 of 15 runs reached 250%".
PERCENT = frozenset({"min_train_acc", "gate_train_acc", "delta", "gate", "margin"})
# Attack radii and steps in [0, 1] pixel units (models normalize inside): rank's train_eps=5
# used to fail in pgd.py, under the name eps, after its base job had written its files.
PIXELS = frozenset({"train_eps", "train_alpha", "eval_eps"})
UPPER = {
    **dict.fromkeys(PERCENT, (100, "a percentage")),
    **dict.fromkeys(PIXELS, (1, "pixel units")),
}

# (training, test) images of every data set a profile may name (bplib.data.DATASETS), here
# because bplib.data imports torch and bplib-run checks sizes without it (tests check the two
# agree). The offline CIFAR-10 copy holds only the first 1,000 test images: n_test up to 10,000
# passes here, and a job refuses a larger n_test than its loaded data holds (CifarData.first_test).
DATA_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
              "cifar10_small": (2_000, 1_000), "cifar100_standin": (320, 20)}  # fmt: skip
# Image counts drawn from the training images left after the held-out split (None: all); the
# chapters slice or subsample, so a larger count used to be clipped silently while its record
# kept the asked-for number (minima n_train=100000000: 50,000 images, batch count from 1e8).
TRAIN_COUNTS = ("n_train", "base_images", "finetune_images")

# What a value of each kind must be, in the words of an error message.
_KIND_NAMES = {"bool": "True or False", "int": "an integer", "float": "a number",
               "str": "a string", "list": "a list or tuple", "dict": "a dict"}  # fmt: skip


def _module(chapter: str):
    return importlib.import_module(f"bplib.profiles.{check_choice('chapter', chapter, CHAPTERS)}")


def chapter_profiles(chapter: str) -> dict:
    """``{"smoke": {...}, "cpu": {...}, "paper": {...}, "gpu": {...}}`` of one chapter."""
    return _module(chapter).PROFILES


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int subclass, never a count
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, list | tuple):  # papermill and JSON give lists where profiles hold tuples
        return "list"
    return type(value).__name__  # "str", "dict", or a kind no profile holds


def _numbers(value):
    """Every number in ``value``, also inside lists, tuples and dict values (not bools)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        yield value


def check_value(chapter: str, key: str, value, allowed_kinds: set[str]) -> None:
    """Raise one ``ValueError`` unless ``value`` has one of ``allowed_kinds`` (an integer passes
    as a number) and its numbers are >= 0, or > 0 (integers >= 1) for a key in :data:`POSITIVE`,
    and at most 100 for a key in :data:`PERCENT`, 1 in :data:`PIXELS`."""
    kind = _kind(value)
    allowed = " or ".join(_KIND_NAMES.get(k, k) for k in sorted(allowed_kinds))
    if kind in allowed_kinds or (kind == "int" and "float" in allowed_kinds):
        positive, (high, unit) = key in POSITIVE, UPPER.get(key, (math.inf, ""))
        ok = (lambda x: 0 < x <= high) if positive else (lambda x: 0 <= x <= high)
        bad = [x for x in _numbers(value) if not ok(x)]  # NaN fails too
        if not bad:
            return
        # a count is an integer; a size that may be a fraction (width 0.125) a positive number
        integer = kind == "int" and "float" not in allowed_kinds
        low = ("an integer >= 1" if integer else "a positive number") if positive else \
            ("an integer >= 0" if integer else "a number >= 0")  # fmt: skip
        bound = f"{low} and <= {high} ({unit})" if high < math.inf else low
        which = key if bad == [value] else f"every number in {key}"
        reason = f"{which} must be {bound}" + ("" if bad == [value] else f" (it holds {bad[0]!r})")
    else:
        reason = f"{key} must be {allowed}, not {type(value).__name__}"
    _refuse(chapter, key, value, reason)


def check_overrides(chapter: str, overrides: dict | None) -> dict:
    """The overrides that are not None, after checking every name (a key of the chapter's
    profiles) and value (:func:`check_value`, the kinds the profiles hold for that key); raises
    one ``ValueError`` naming the first bad one and what is allowed, before any work. The one
    validator of a chapter's ``overrides`` parameter: ``bplib-run`` calls it before it starts a
    notebook, and :func:`get_profile` in the chapter run alone."""
    profiles = chapter_profiles(chapter)
    keys = profiles[PROFILE_NAMES[0]]
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ValueError(
            f"overrides={overrides!r} of chapter {chapter!r} must be a dict {{profile key: value}}"
            f", e.g. {{'epochs': 3}}, or None; keys: {', '.join(sorted(keys))}"
        )
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(str, unknown))} for chapter {chapter!r}; "
            f"allowed: {', '.join(sorted(keys))}"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        kinds = {_kind(p[key]) for p in profiles.values()} - {None}  # None in a profile: "all"
        check_value(chapter, key, value, kinds or {_kind(value)})
    return given


def _refuse(chapter: str, key: str, value, reason: str):
    raise ValueError(
        f"parameter {key}={value!r} of chapter {chapter!r} is not allowed: {reason}; "
        "give another value, or None for the profile's value"
    )


def check_sizes(chapter: str, values: dict) -> None:
    """Raise one ``ValueError`` unless every image count in a chapter's merged ``values`` fits
    the data it counts (:data:`DATA_SIZES`, the smallest data set the chapter uses): the
    held-out split (``n_holdout``) leaves a training image, the :data:`TRAIN_COUNTS` fit in
    what it leaves, ``n_test`` in the test split, ``n_robust`` in ``n_test``, and the Hessian's
    and the NTK's images in ``n_train``. A record must not name more images than were used."""
    used = {"dataset": [values["dataset"]]} if "dataset" in values else {}
    used.update(datasets=values.get("datasets", []), **{  # {family or kind: [data sets]}
        key: [d for ds in values.get(key, {}).values() for d in ds]
        for key in ("extra_datasets", "bases")})  # fmt: skip
    for key, names in used.items():
        for name in (n for n in names if n not in DATA_SIZES):
            _refuse(chapter, key, values[key], f"{name!r} is not a data set; choose from "
                    f"{', '.join(DATA_SIZES)}")  # fmt: skip
    names = [n for ns in used.values() for n in ns]
    if not names:
        return
    small = min(names, key=lambda d: DATA_SIZES[d])  # the smallest training and test split
    train, test = DATA_SIZES[small]
    holdout = values.get("n_holdout") or 0
    if holdout > train - 1:
        _refuse(chapter, "n_holdout", holdout, f"{small} has {train:,} training images, so at "
                f"most {train - 1:,} can be held out")  # fmt: skip
    pool = f"the {train - holdout:,} training images of {small}" + (
        f" left after n_holdout={holdout:,}" if "n_holdout" in values else "")  # fmt: skip
    limits = dict.fromkeys(TRAIN_COUNTS, (train - holdout, pool))
    limits["n_test"] = (test, f"the {test:,} test images of {small}")
    n_train, n_test = values.get("n_train") or train - holdout, values.get("n_test") or test
    limits.update(n_robust=(n_test, f"the n_test={n_test:,} test images evaluated"),
                  hessian_images=(n_train, f"the n_train={n_train:,} training images"),
                  n_images=(n_train, f"the n_train={n_train:,} training images"))  # fmt: skip
    if "official" in values.get("samples", ()):  # the first batch of 128 (bplib.measures.ntk)
        limits["n_images"] = (min(n_train, 128), "the official sample (the first 128) in n_train")
    if "n_images" in values:  # stored kernels: the first explorer_images of the sample
        limits["explorer_images"] = (values["n_images"], f"n_images={values['n_images']}")
    for key, (high, what) in limits.items():
        value = values.get(key)
        counts = list(value.values()) if isinstance(value, dict) else [value]
        if any(n is not None and n > high for n in counts):
            _refuse(chapter, key, value, f"it counts images of {what}: at most {high:,}")


def standin(datasets):
    """``datasets`` (a list, or a dict of lists) with CIFAR-100 replaced by its 20-image offline
    stand-in: what a dry run trains on, where the offline folder has no CIFAR-100."""
    if isinstance(datasets, dict):
        return {k: standin(v) for k, v in datasets.items()}
    return ["cifar100_standin" if d == "cifar100" else d for d in datasets]


def dryrun_overrides(chapter: str, profile: str = "paper") -> dict:
    """What the dry run changes in ``chapter``'s ``profile`` (one of :data:`DRYRUN_PROFILES`):
    the module's ``DRYRUN`` dict (data set sizes, epochs, seeds, measurement budgets), where a
    callable value is applied to the profile's own value (CIFAR-100 -> its offline stand-in by
    :func:`standin`, a per-family recipe cut to one epoch), checked like any override. Models,
    widths, arms and code paths stay the profile's."""
    base = chapter_profiles(chapter)[profile]
    dry = {k: v(base[k]) if callable(v) else v for k, v in _module(chapter).DRYRUN.items()}
    return check_overrides(chapter, dry)


def assigned_names(source: str) -> list[str]:
    """Names assigned at the top level of a cell's ``source``, in order, by :mod:`ast` (papermill's
    line parser drops an assignment whose comment holds a quote)."""
    names = [n.id for node in ast.parse(source).body if isinstance(node, ast.Assign | ast.AnnAssign)
             for t in getattr(node, "targets", [getattr(node, "target", None)])
             for n in ast.walk(t) if isinstance(n, ast.Name)]  # fmt: skip
    return list(dict.fromkeys(names))


def check_injected_parameters() -> None:
    """Raise one ``ValueError`` if papermill injected a name that the notebook's parameters cell
    does not assign (papermill only warns, and the value would be ignored). In a kernel, the
    injected cell (``# Parameters`` first) is read back from IPython's input history, where the
    parameters cell is the cell before it; elsewhere, or with nothing injected, nothing is done.
    :func:`get_profile` calls it: every chapter, the results page too, calls that first."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    history = list(getattr(shell, "user_ns", {}).get("In", []))
    for i, source in enumerate(history[1:], 1):
        if isinstance(source, str) and source.lstrip().startswith("# Parameters"):
            allowed = set(assigned_names(history[i - 1]))  # the cell the kernel just ran
            given = {n for n in assigned_names(source) if not n.startswith("PAPERMILL_")}
            if given - allowed:  # PAPERMILL_*: papermill's own --inject-paths names
                raise ValueError(
                    f"unknown parameter(s) {', '.join(sorted(given - allowed))} given by "
                    f"papermill; this notebook's parameters cell assigns: "
                    f"{', '.join(sorted(allowed))} (papermill only warns: the value would be "
                    "ignored)"
                )


def get_profile(
    chapter: str, profile: str, seeds=None, dryrun: bool = False, overrides=None, **more
) -> SimpleNamespace:
    """The sizes of ``chapter`` at ``profile``; ``overrides`` (a chapter's parameter: a dict or
    None) and keyword arguments (``epochs=3``, for code) that are not None replace them;
    ``seeds=None`` takes the profile's. ``dryrun=True`` (paper and gpu only) applies
    :func:`dryrun_overrides` first, and the namespace then has ``dryrun=True``. Every check
    above raises one ``ValueError`` naming what is wrong, before anything is computed."""
    check_injected_parameters()
    check_choice("profile", profile, PROFILE_NAMES)
    check_choice("dryrun", dryrun, (False, True))
    if dryrun and profile not in DRYRUN_PROFILES:
        raise ValueError(f"dryrun=True cuts the GPU profiles ({', '.join(DRYRUN_PROFILES)}) down;"
                         f" profile={profile!r} is not one")  # fmt: skip
    values = dict(chapter_profiles(chapter)[profile])
    values.update(dryrun_overrides(chapter, profile) if dryrun else {})
    values.update(check_overrides(chapter, overrides))
    values.update(check_overrides(chapter, more))
    check_sizes(chapter, values)
    values["seeds"] = check_seeds(values["seeds"] if seeds is None else seeds)
    values["profile"] = profile
    if dryrun:  # only then: every other profile's namespace (and record keys) stays as it was
        values["dryrun"] = True
    return SimpleNamespace(**values)
