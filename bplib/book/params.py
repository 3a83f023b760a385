"""Chapter parameters, checked before any work (torch-free, as all of ``bplib.book``).

- :func:`chapter_parameters`: the names a chapter's ``parameters`` cell assigns; ``bplib-run``
  accepts only those as ``-p`` names.
- :func:`parse_value`: a ``-p`` value; a malformed Python literal is an error, not a string.
- :func:`check_values`: ``-p`` values through the checks of :func:`bplib.profiles.get_profile`.
- :func:`job_places`: the records store and data folder a job's kernel will use, so that
  ``bplib-run`` never counts a run into another store, or on other data, as complete.
- :func:`reject_unknown_parameters`: called by a chapter's setup cell; papermill run directly
  (not through ``bplib-run``) only warns about an unknown ``-p`` name, the chapter then raises.
"""

import ast
import os
import re
import warnings
from pathlib import Path

from bplib.book import DEFAULT_CHAPTERS_DIR, REPO_ROOT
from bplib.profiles import CHAPTERS, chapter_profiles, check_overrides

# bplib.data.DEFAULT_OFFLINE_DIR and the default of bplib.results.records_root, repeated here
# because those modules import torch; tests/test_reliability_batch.py checks they agree.
DEFAULT_OFFLINE_DIR = REPO_ROOT.parent / "shared" / "data" / "cifar"
DEFAULT_RECORDS_DIR = REPO_ROOT / "data" / "records"
INJECTED = "# Parameters"  # first line of the cell papermill injects (its Python translator)

# A -p value that starts like a number or a container, or ends like a container, was meant as a
# Python literal: if it does not parse, passing it on as a string would fail much later.
_LITERAL_LIKE = re.compile(r"""^\s*([-+]?\.?\d|[\[({'"])|[\])}]\s*$""")


def assigned_names(source: str) -> list[str]:
    """Names assigned at the top level of a cell's source, in order (magics allowed)."""
    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))  # magics -> Python
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for name in (n for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                if name.id not in names:
                    names.append(name.id)
    return names


def chapter_parameters(notebook) -> list[str]:
    """Names assigned at the top level of the cell tagged ``parameters``, in order.

    Parsed with :mod:`ast` rather than papermill's ``inspect_notebook``: papermill's line parser
    drops an assignment whose comment holds a quote (``seeds = None  # the profile's seeds``).
    """
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    return assigned_names(cells[0].source) if cells else []


def parse_value(text: str, name: str = "value"):
    """A ``-p`` value: a Python literal (``3``, ``0.1``, ``None``, ``[1, 2]``), else a string;
    ``ValueError`` naming ``name`` for text that looks like a literal but is not one."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        if not _LITERAL_LIKE.search(text):
            return text  # a plain word or path: a string, as before
        why = err.msg if isinstance(err, SyntaxError) else "an expression is not computed"
        raise ValueError(
            f"parameter {name!r}: {text!r} is not a valid Python literal ({why}); write one "
            "such as 3, 0.1, None, [1, 2] or {'a': 1}, or quote a string: "
            f"-p {name} \"'{text}'\""
        ) from None


def check_values(chapter: str, params: dict) -> None:
    """Check ``-p`` values as the chapter will: those named like its profile keys with
    :func:`bplib.profiles.check_overrides`, ``data_dir`` as a folder path; ``ValueError``."""
    data_dir = params.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ValueError(
            f"parameter data_dir={data_dir!r} must be a folder path (a string) or None"
        )
    if chapter in CHAPTERS:
        keys = chapter_profiles(chapter)["smoke"]
        check_overrides(chapter, {k: v for k, v in params.items() if k in keys and k != "seeds"})


def job_places(params: dict, cwd: Path) -> dict:
    """``{"records": folder, "data": folder or None}``: resolved absolute paths of the records
    store and the offline data folder that a kernel working in ``cwd``, with this process's
    environment, uses (as ``bplib.results.records_root`` and ``bplib.data.offline_dir``: the
    ``data_dir`` parameter, else ``BPLIB_DATA``, else the default folder if it exists). ``data``
    None: no offline folder, torchvision's download. Dask workers must share this environment.
    """
    cwd = Path(cwd)
    records = os.environ.get("BPLIB_RECORDS") or DEFAULT_RECORDS_DIR
    data = params.get("data_dir") or os.environ.get("BPLIB_DATA")
    if not data and DEFAULT_OFFLINE_DIR.is_dir():
        data = DEFAULT_OFFLINE_DIR
    return {
        "records": str((cwd / records).resolve()),
        "data": str((cwd / data).resolve()) if data else None,
    }


def reject_unknown_parameters(chapter: str, chapters_dir: str | Path | None = None) -> None:
    """Raise one ``ValueError`` if papermill injected a name that the chapter's ``parameters``
    cell does not assign (papermill itself only warns, and the value would be ignored).

    For a chapter's setup cell: the injected cell (source starting with ``# Parameters``) is
    read back from IPython's input history. Outside IPython, or with nothing injected, nothing
    is done. The chapter is ``<chapter>.md`` in ``chapters_dir``, else in the working directory
    (where papermill and the book run a chapter), else in the repository's chapters folder.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # not in IPython: nothing can have been injected
        return
    shell = get_ipython()
    history = shell.user_ns.get("In", []) if shell is not None else []
    injected = [s for s in history if isinstance(s, str) and s.lstrip().startswith(INJECTED)]
    if not injected:
        return
    folders = [Path(chapters_dir)] if chapters_dir else [Path.cwd(), DEFAULT_CHAPTERS_DIR]
    source = next((f / f"{chapter}.md" for f in folders if (f / f"{chapter}.md").is_file()), None)
    if source is None:
        where = " or ".join(map(str, folders))
        return _unchecked(
            chapter, f"{chapter}.md is not in {where}; pass chapters_dir=<its folder>"
        )
    try:
        import jupytext  # here: only a papermill run gets this far, Colab never imports it
    except ImportError:
        return _unchecked(chapter, "jupytext is not installed; pip install jupytext")
    allowed = chapter_parameters(jupytext.read(source))
    # PAPERMILL_INPUT_PATH / PAPERMILL_OUTPUT_PATH: papermill's own --inject-paths names.
    given = [n for n in assigned_names(injected[-1]) if not n.startswith("PAPERMILL_")]
    unknown = [n for n in given if n not in allowed]
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} given to chapter {chapter!r} (papermill "
            f"-p); its parameters cell ({source}) allows: {', '.join(allowed)}. Fix the name "
            "(papermill only warns, and the value would be ignored)."
        )


def _unchecked(chapter: str, why: str) -> None:
    """Warn that the injected names of ``chapter`` could not be checked, and why."""
    message = f"the parameter names papermill injected into chapter {chapter!r} are not checked"
    warnings.warn(f"{message}: {why}", stacklevel=3)
