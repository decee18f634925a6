"""Atomic file output: write under a temporary name next to the destination, rename when complete."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


def temporary_sibling(destination: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden name in ``destination``'s folder (same file system, so the rename is atomic)."""
    # pid + random token: concurrent processes writing the same output never share a temporary.
    return destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``destination``, on any failure it is deleted.

    The temporary is created by the caller (so it gets the usual permissions from the umask, unlike
    ``tempfile.mkstemp``'s 0600). Parent folders are created.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(destination, suffix)
    try:
        yield temporary
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
