"""Small argument checks shared by the model modules (clear errors naming the parameter)."""

from __future__ import annotations

import operator
from collections.abc import Iterable


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else ValueError naming ``name``."""
    try:
        as_int = operator.index(value)  # ints and numpy integers, not floats
    except TypeError:
        as_int = None
    if isinstance(value, bool) or as_int is None or as_int < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return as_int


def positive_float(name: str, value) -> float:
    """``value`` as a float > 0, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def choice(name: str, value, allowed: Iterable):
    """``value`` if it is one of ``allowed``, else ValueError listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def scaled(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: the channel count of a width-scaled layer."""
    return max(1, round(channels * width))
