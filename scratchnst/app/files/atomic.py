"""Atomic file writes: a temp file beside the target, fsync, then os.replace.

A failure at any point removes the temp file and leaves an existing file at the target untouched.
Without the fsyncs (durable=False) the replace is as atomic for readers and against a killed writer,
but an operating-system crash may lose the new file: for files remade every second or two (the
studio's previews and progress records), where the fsyncs would cost more than the file is worth.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from scratchnst.errors import ScratchnstError, one_line


@contextmanager
def atomic_open(path: str | os.PathLike, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it replaces `path` atomically (new files get mode 0644),
    fsynced unless not `durable` (see the module docstring)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        mode = p.stat().st_mode & 0o777 if p.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as exc:
        raise ScratchnstError(f"{p}: cannot write ({one_line(exc)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
        if durable:
            _fsync_dir(p.parent)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ScratchnstError(f"{p}: cannot write ({one_line(exc)})") from None
        raise


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a probe file in `folder`; OSError when that fails. os.access trusts the mode
    bits; root, read-only mounts and pseudo file systems need a real try."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".scratchnst-probe-")
    os.close(fd)
    os.unlink(probe)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    with atomic_open(path, durable=durable) as f:
        f.write(data)


def _fsync_dir(d: Path) -> None:
    """Best effort: make the rename durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
