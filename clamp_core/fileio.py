"""Atomic file writes: a killed process leaves either the old file or the complete new one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def fsync_path(p: str | os.PathLike) -> None:
    """fsync a file, or a directory so that a rename inside it is durable (best effort: some
    file systems refuse, and a missing path is left alone)."""
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


fsync_dir = fsync_path
"""Make a rename inside a directory durable (``fsync_path`` of the directory)."""


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Write ``path`` through a hidden temporary file beside it: flushed, fsynced and renamed
    over ``path`` when the block ends; removed (and ``path`` untouched) when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
