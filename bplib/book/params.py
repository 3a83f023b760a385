"""A chapter's parameters, checked by ``bplib-run`` before any notebook starts (torch-free).

Profile keys go to the chapter's ``overrides`` through :func:`bplib.profiles.check_overrides`,
the validator that the chapter's ``get_profile`` call uses when it runs alone.
"""

import ast
import os
import re
from pathlib import Path

from bplib import COMMITTED, OFFLINE_DATA
from bplib.checks import check_folder
from bplib.profiles import CHAPTERS, assigned_names, chapter_profiles, get_profile

# Set by bplib-run's options, never by -p.
RESERVED = {"profile": "--profile", "seeds": "--seeds", "jobs": "--jobs",
            "overrides": "-p KEY VALUE, one profile key at a time"}  # fmt: skip
# A -p value that starts like a number or a container, or ends like a container, was meant as a
# Python literal: if it does not parse, passing it on as a string would fail much later.
_LITERAL_LIKE = re.compile(r"""^\s*([-+]?\.?\d|[\[({'"])|[\])}]\s*$""")


def chapter_parameters(notebook) -> list[str]:
    """The names the cell tagged ``parameters`` assigns, in order (none without such a cell)."""
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    return assigned_names(cells[0].source) if cells else []


def parse_value(text: str, name: str = "value"):
    """A ``-p`` value: a Python literal (``3``, ``0.1``, ``None``, ``[1, 2]``), else a string;
    ``ValueError`` naming ``name`` for text that looks like a literal but is not one."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        if not _LITERAL_LIKE.search(text):
            return text  # a plain word or path: a string
        why = err.msg if isinstance(err, SyntaxError) else "an expression is not computed"
        raise ValueError(
            f"parameter {name!r}: {text!r} is not a valid Python literal ({why}); write one "
            "such as 3, 0.1, None, [1, 2] or {'a': 1}, or quote a string: "
            f"-p {name} \"'{text}'\""
        ) from None


def split_parameters(
    chapter: str, allowed: list[str], params: dict, profile: str = "smoke"
) -> tuple[dict, dict]:
    """``(parameters, overrides)``: the ``-p`` names the parameters cell assigns (``allowed``),
    and the others, which must be keys of the chapter's profile (values checked, and sizes
    against the data at ``profile``, as the chapter's ``get_profile`` will). One ``ValueError``
    names the first bad name or value and what is allowed."""
    reserved = sorted(RESERVED.keys() & params.keys())
    if reserved:
        name = reserved[0]
        raise ValueError(f"parameter {name!r} is set with {RESERVED[name]}, not with -p {name}")
    own = {k: v for k, v in params.items() if k in allowed}
    keys = list(chapter_profiles(chapter)["smoke"]) if chapter in CHAPTERS else []
    for name in [k for k in params if k not in own]:
        if name not in keys or "overrides" not in allowed:
            also = f", or a key of its profile: {', '.join(keys)}" if keys else ""
            choices = (", ".join(n for n in allowed if n not in RESERVED) or "(none)") + also
            raise ValueError(
                f"unknown parameter {name!r} for chapter {chapter!r}; choose from {choices}"
            )
    for name in ("data_dir", "checkpoints"):  # runner.Context's check, before any notebook
        check_folder(f"parameter {name}", own.get(name))
    overrides = {k: v for k, v in params.items() if k not in own}
    if chapter in CHAPTERS:  # the chapter's own call: names, kinds, ranges and data sizes
        get_profile(chapter, profile, dryrun=own.get("dryrun", False), overrides=overrides)
    return own, {k: v for k, v in overrides.items() if v is not None}


def job_places(params: dict, cwd: Path) -> dict:
    """``{"records": folder, "data": folder or None}``: resolved absolute paths of the records
    store and the offline data folder that a kernel working in ``cwd``, with this process's
    environment, uses (as ``bplib.results.records_root`` and ``bplib.data.offline_dir``: the
    ``data_dir`` parameter, else ``BPLIB_DATA``, else the default folder if it exists). ``data``
    None: no offline folder, torchvision's download. Dask workers must share this environment.
    """
    records = os.environ.get("BPLIB_RECORDS") or COMMITTED
    data = params.get("data_dir") or os.environ.get("BPLIB_DATA")
    if not data and OFFLINE_DATA.is_dir():
        data = OFFLINE_DATA
    resolved = {"records": records, "data": data}
    return {k: str((Path(cwd) / v).resolve()) if v else None for k, v in resolved.items()}
