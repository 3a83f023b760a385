"""The three profiles of every chapter, in one place.

- ``smoke``: seconds per chapter on a CPU; CI, tests and the default of every parameters cell.
- ``cpu``: the paper's qualitative claim on 2 CPU cores within the time its issue names.
- ``paper``: the paper's stated hyperparameters, for a GPU.

Each chapter has one module here (``minima``, ``weight_decay``, ``ntk``, ``rank``) defining a
dict ``PROFILES = {"smoke": {...}, "cpu": {...}, "paper": {...}}`` whose keys are the chapter's
sizes and hyperparameters (data subset, epochs, widths, seeds, ...), with units in comments.
:func:`get_profile` returns one of them with the chapter's overrides applied.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from bplib.checks import check_choice, check_seeds

PROFILE_NAMES = ("smoke", "cpu", "paper")
CHAPTERS = ("minima", "weight_decay", "ntk", "rank")


def chapter_profiles(chapter: str) -> dict:
    """``{"smoke": {...}, "cpu": {...}, "paper": {...}}`` of one chapter."""
    check_choice("chapter", chapter, CHAPTERS)
    return importlib.import_module(f"bplib.profiles.{chapter}").PROFILES


def get_profile(chapter: str, profile: str, seeds=None, **overrides) -> SimpleNamespace:
    """The sizes of ``chapter`` at ``profile``; overrides that are not None replace them.

    ``seeds=None`` takes the profile's seeds. An unknown chapter, profile or override name raises
    one ``ValueError`` naming it and the allowed values, before anything is computed.
    """
    check_choice("profile", profile, PROFILE_NAMES)
    values = dict(chapter_profiles(chapter)[profile])
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for chapter {chapter!r}; "
            f"allowed: {', '.join(sorted(values))}"
        )
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["seeds"] = check_seeds(values["seeds"] if seeds is None else seeds)
    values["profile"] = profile
    return SimpleNamespace(**values)
