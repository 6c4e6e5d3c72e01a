"""Atomic file writes (a reader sees the old file or the whole new one) and the report folder's lock.

Temporary files are named ``.<name>.<pid>.<n>.tmp`` beside their target, so that those left by a killed
process can be recognised and removed (``remove_stale_temps``). The final path is never opened for
writing: ``os.replace`` swaps the finished temporary file in, replacing a symlink there, not its target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agatax.errors import InputError

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "folder_lock", "remove_stale_temps",
           "remove_file"]

_TEMP = re.compile(r"^\..+\.(\d+)\.\d+\.tmp$")
_COUNTER = itertools.count()
LOCK_NAME = ".agatax.lock"


def _read_umask() -> int:
    """The process umask (read once at import: setting it to read it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _mode_for(path: Path) -> int:
    """The mode of the regular file at ``path`` (kept on replace), else what ``open`` would give."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0o666 & ~_UMASK
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success it is flushed to disk and
    renamed over ``path`` (keeping an existing file's permissions); on any error, KeyboardInterrupt
    included, it is removed and ``path`` is left untouched. A ``path`` that is not a regular file (a pipe,
    ``/dev/stdout``, a device, or a link to one) is written in place instead: replacing it would swap the
    stream for a file."""
    path = Path(path)
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)  # following links: /dev/stdout, a FIFO, a device
    except (FileNotFoundError, NotADirectoryError):
        special = False
    if special and not path.is_dir():  # cannot be replaced (nor should be): written in place
        with open(path, "wb") as handle:
            yield handle
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{next(_COUNTER)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), _mode_for(path))
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as handle:
        handle.write(payload)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_open``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_file(path: str | os.PathLike) -> None:
    """Remove ``path`` (a file or a symlink, never what it points to) if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of dead processes (``.<name>.<pid>.<n>.tmp``) in ``folder``."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            found = _TEMP.match(entry.name)
            if found and not entry.is_dir(follow_symlinks=False) and not _alive(int(found.group(1))):
                remove_file(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder/.agatax.lock`` (an flock, released by the system when the process dies) for the block.

    Raises:
        InputError REPORT_BUSY when another process holds it.
    """
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise InputError(f"{folder} is in use by another agatax batch (pid {holder})", code="REPORT_BUSY",
                             hint="wait for it to finish, or write to another --report folder",
                             paths=[str(folder)]) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
