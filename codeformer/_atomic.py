"""Atomic file output: write under a temporary name next to the destination, rename when complete.

Folders are created only for something written into them: a write that fails removes the folders
it created (when they are still empty), so a failed run leaves no empty output or weights folders.
"""

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
def parent_folders(destination: Path) -> Iterator[None]:
    """Create ``destination``'s missing parent folders; remove the ones made here if the body fails and they are empty."""
    missing = []
    folder = destination.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for created in missing:  # innermost first
            try:
                created.rmdir()
            except OSError:  # not empty (another output landed there) or already gone: keep it
                break
        raise


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``destination``, on any failure it is deleted.

    The temporary is created by the caller (so it gets the usual permissions from the umask, unlike
    ``tempfile.mkstemp``'s 0600). Parent folders are created, and removed again if the write fails.
    """
    destination = Path(destination)
    with parent_folders(destination):
        temporary = temporary_sibling(destination, suffix)
        try:
            yield temporary
            os.replace(temporary, destination)
        finally:
            temporary.unlink(missing_ok=True)
