"""Validation of user-facing parameters: one clear error naming the parameter and the allowed."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence


def check_choice(name: str, value, allowed: Iterable):
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``; return it."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}"
        )
    return value


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """Raise ``ValueError`` unless ``value`` is an integer (numpy ones too) in ``[low, high]``."""
    try:
        value = operator.index(value)  # ints and numpy integers, not floats
    except TypeError:
        raise ValueError(f"{name}={value!r} must be an integer") from None
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'-inf' if low is None else low}..{'inf' if high is None else high}"
        raise ValueError(f"{name}={value!r} is out of range; allowed: {bounds}")
    return value


def check_float(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """Raise ``ValueError`` unless ``value`` is a real number in ``[low, high]``; return it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r} must be a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value!r} is out of range; allowed: [{low}, {high}]")
    return float(value)


def check_positive(name: str, value) -> float:
    """Raise ``ValueError`` unless ``value`` is a real number > 0; return it as float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a positive number")
    return float(value)


def check_folder(name: str, value):
    """Raise ``ValueError`` unless ``value`` is None or a folder's path (a string or path);
    return it. A number there used to reach ``Path()`` as a ``TypeError`` without its name."""
    if value is not None and not isinstance(value, str | os.PathLike):
        raise ValueError(f"{name}={value!r} must be a folder (a string or path) or None")
    return value


def check_seeds(seeds) -> list[int]:
    """Seeds as a non-empty list of distinct non-negative integers (an int means one seed)."""
    if getattr(seeds, "ndim", None) == 1:  # a numpy (or torch) vector of seeds
        seeds = seeds.tolist()
    if isinstance(seeds, Sequence) and not isinstance(seeds, str | bytes):
        seeds = list(seeds)  # a list, tuple or range
    else:  # "abc" was split into letters, 3.0 gave a TypeError
        try:
            if isinstance(seeds, bool):
                raise TypeError("a bool is not a seed")
            seeds = [operator.index(seeds)]  # one integer (numpy's too) is one seed
        except TypeError:
            raise ValueError(
                f"seeds={seeds!r} must be a non-negative integer or a list of them, e.g. [0, 1]"
            ) from None
    if not seeds:
        raise ValueError("seeds=[] is empty; give at least one non-negative integer")
    for s in seeds:
        check_int("seeds", s, low=0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r} has repeats; give distinct integers")
    return seeds


# Measurement dtypes (Hessian, NTK, singular values): never bf16, which is for training only.
MEASURE_DTYPES = ("float32", "float64")


def check_dtype(name: str, value: str):
    """The torch dtype of a measurement dtype name (``"float32"`` or ``"float64"``)."""
    import torch  # here, not at the top: the book tools import checks without torch

    return getattr(torch, check_choice(name, value, MEASURE_DTYPES))
