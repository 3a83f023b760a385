"""Atomic file writes, shared by the records store, training checkpoints and ``bplib-run``'s
executed notebooks (no torch import: ``bplib-run``'s parent process stays light).

Every write goes to a temporary file of a unique name (``.tmp-*``) in the target's folder, which
then replaces the target in one ``os.replace``: a killed run leaves the old file or the new one,
never half a file, and two processes writing the same file at once never share a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temporary files of atomic writes; never read as records or arrays
# bplib-run names a file here for each notebook it runs, and the kernel's runner lists in it
# every record it returned: a kept notebook counts as complete only while those records are
# still in the store (an emptied store used to be reported "skipped").
RECORDS_READ_ENV = "BPLIB_RUN_RECORDS_READ"


def note_records_read(paths) -> None:
    """Append ``paths`` (records a chapter read) to ``$BPLIB_RUN_RECORDS_READ``, if it is set."""
    log = os.environ.get(RECORDS_READ_ENV)
    if log and paths:
        with open(log, "a") as file:
            file.writelines(f"{Path(p).resolve()}\n" for p in paths)


def current_umask() -> int:
    """The process umask, read without changing it for good (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no read-only call elsewhere: set and restore at once
    os.umask(old)
    return old


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the mode a plain ``open`` would (mkstemp makes 0600,
    unreadable to a group sharing the store), then move it into place atomically."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)


class WriteFailed(OSError):
    """Writing a file failed (a full disk, a quota, ...). The message names the file; the file
    there before, if any, is unchanged (every write goes to a temporary file first)."""


def write_file(path: str | os.PathLike, write, what: str) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file of a unique name in the
    same folder (two processes writing the same path never share one), which :func:`publish`
    then moves into place. On any error the temporary file is removed; a failed write (an
    ``OSError``, or torch.save's ``RuntimeError`` "unexpected pos" on a full disk, which names
    no file) raises :class:`WriteFailed` naming ``path`` and ``what`` it is."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=path.suffix)
        os.close(fd)
        write(tmp)
        publish(tmp, path)
    except (OSError, RuntimeError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        why += " (a full disk?)" if isinstance(err, RuntimeError) else ""
        message = f"cannot write {what} {path}: {why}; the file there before, if any, is unchanged"
        code = getattr(err, "errno", None)  # kept, so a caller can still test for ENOSPC
        raise (WriteFailed(code, message) if code else WriteFailed(message)) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
