"""Folders on this disk or behind an fsspec URL (``s3://``, ``gs://``, ``file://`` ...), as a cluster job uses them.

A cluster's workers read inputs and write outputs themselves, so a job names its folders by strings
that mean the same on every machine: a shared path, or a URL. :class:`Folder` lists, reads and
writes under one such root:

- local folders (plain paths and ``file://`` URLs) go through :mod:`codeformer._atomic` and
  :mod:`codeformer.imageio` as the single-machine run does: only regular files are read, outputs are
  written to a hidden temporary name next to the destination and renamed onto it;
- anything else goes through fsspec: an output is written under a hidden temporary name in the
  destination's folder and moved onto its name when complete (on object stores a move is a copy
  and a delete, so a reader sees either no object or the whole one).

fsspec is imported only when a URL needs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator

from codeformer._atomic import atomic_path
from codeformer.errors import CodeFormerError
from codeformer.imageio import read_file_bytes, write_bytes_atomic

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["Folder", "is_url", "name_of", "read_file", "split_location"]

# "scheme://..." with a scheme of two or more letters: one letter is a Windows drive ("C:\\...").
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URL (``s3://bucket/x``, ``file:///data``) rather than a plain path."""
    return isinstance(location, str) and bool(_URL.match(location))


def name_of(location: str) -> str:
    """The last component of a path or URL (``s3://b/photos/a.jpg`` -> ``a.jpg``)."""
    return PurePosixPath(location.rstrip("/")).name if is_url(location) else Path(location).name


def _filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise CodeFormerError(f"{url}: URLs need fsspec: pip install fsspec (and s3fs, gcsfs ... for its store)") \
            from None
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as error:
        # fsspec names the package a protocol needs ("Install s3fs to access S3").
        raise CodeFormerError(f"{url}: {' '.join(str(error).split())}") from None


@dataclass
class Folder:
    """A folder named by a local path or an fsspec URL; relative names below it use ``/``.

    Picklable: a worker gets the location and opens the file system itself.
    """

    location: str
    _fs: Any = field(default=None, init=False, repr=False, compare=False)
    _root: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.location = os.fspath(self.location)
        if not is_url(self.location):
            return
        fs, root = _filesystem(self.location)
        if _is_local(fs):
            # file:// is this machine's disk: the same code path (and guarantees) as a plain path.
            self.location = root
        else:
            self._fs, self._root = fs, root.rstrip("/")

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}  # a file system object may not travel; it is opened again

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location, self._fs, self._root = state["location"], None, ""
        self.__post_init__()

    @property
    def is_local(self) -> bool:
        return self._fs is None

    @property
    def local_path(self) -> Path:
        """The folder on this machine's disk (local folders only)."""
        if self._fs is not None:
            raise CodeFormerError(f"{self.location} is not on this machine's disk")
        return Path(self.location)

    def child(self, relative: str) -> str:
        """``relative`` below this folder, as a location another :class:`Folder` or a worker understands."""
        if self._fs is None:
            return str(Path(self.location, *relative.split("/")))
        return f"{self.location.rstrip('/')}/{relative}"

    def _remote(self, relative: str) -> str:
        return f"{self._root}/{relative}" if relative else self._root

    # -------------------------------------------------------------------------------------- reading

    def names(self, relative: str = "") -> set[str]:
        """Names of the files directly in ``relative`` (empty when that folder does not exist)."""
        if self._fs is None:
            folder = Path(self.child(relative)) if relative else Path(self.location)
            try:
                return {entry.name for entry in os.scandir(folder) if entry.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                return set()
        try:
            entries = self._fs.ls(self._remote(relative), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        return {PurePosixPath(entry["name"]).name for entry in entries if entry.get("type") == "file"}

    def entries(self) -> list[tuple[str, bool]]:
        """(name, is a file) for every entry directly in this folder, sorted by name."""
        try:
            if self._fs is None:
                return sorted((entry.name, entry.is_file()) for entry in os.scandir(self.location))
            listed = self._fs.ls(self._root, detail=True)
        except FileNotFoundError:
            raise CodeFormerError(f"{self.location} does not exist") from None
        except NotADirectoryError:
            raise CodeFormerError(f"{self.location} is not a folder") from None
        except OSError as error:
            raise CodeFormerError(f"{self.location}: cannot list ({error.strerror or error})") from None
        found = [(PurePosixPath(entry["name"]).name, entry.get("type") == "file") for entry in listed]
        return sorted(entry for entry in found if entry[0])

    def is_folder(self) -> bool:
        if self._fs is None:
            return Path(self.location).is_dir()
        return bool(self._fs.isdir(self._root))

    def exists(self, relative: str) -> bool:
        if self._fs is None:
            return Path(self.child(relative)).is_file()
        return bool(self._fs.isfile(self._remote(relative)))

    def read_bytes(self, relative: str) -> bytes:
        """A file's bytes; any problem is a one-line :class:`CodeFormerError`."""
        if self._fs is None:
            return read_file_bytes(Path(self.child(relative)))
        try:
            return bytes(self._fs.cat_file(self._remote(relative)))
        except FileNotFoundError:
            raise CodeFormerError(f"{self.child(relative)}: cannot read (no such file)") from None
        except IsADirectoryError:
            raise CodeFormerError(f"{self.child(relative)}: a folder, not a file") from None
        except OSError as error:
            raise CodeFormerError(f"{self.child(relative)}: cannot read ({error.strerror or error})") from None

    @contextlib.contextmanager
    def local_copy(self, relative: str) -> Iterator[Path]:
        """A file of this folder on this machine's disk: itself, or a temporary download removed afterwards."""
        if self._fs is None:
            yield Path(self.child(relative))
            return
        with tempfile.TemporaryDirectory(prefix="codeformer-") as scratch:
            local = Path(scratch) / PurePosixPath(relative).name
            try:
                self._fs.get_file(self._remote(relative), str(local))
            except FileNotFoundError:
                raise CodeFormerError(f"{self.child(relative)}: no such file") from None
            yield local

    # -------------------------------------------------------------------------------------- writing

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file atomically: under a hidden temporary name next to it, then moved onto its name."""
        if self._fs is None:
            write_bytes_atomic(Path(self.child(relative)), data)
            return
        with self._remote_temporary(relative) as temporary:
            self._fs.pipe_file(temporary, data)

    def put_file(self, local: Path, relative: str) -> None:
        """Copy a local file here atomically (a local folder gets it moved in when on the same disk)."""
        if self._fs is None:
            destination = Path(self.child(relative))
            with atomic_path(destination) as temporary:
                shutil.copyfile(local, temporary)
            return
        with self._remote_temporary(relative) as temporary:
            self._fs.put_file(str(local), temporary)

    @contextlib.contextmanager
    def _remote_temporary(self, relative: str) -> Iterator[str]:
        target = PurePosixPath(self._remote(relative))
        temporary = str(target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
        try:
            yield temporary
            self._fs.mv(temporary, str(target))
        except OSError as error:
            raise CodeFormerError(f"{self.child(relative)}: cannot write ({error.strerror or error})") from None
        finally:
            with contextlib.suppress(OSError):
                if self._fs.exists(temporary):
                    self._fs.rm_file(temporary)

    def remove(self, relative: str) -> None:
        """Delete a file if it is there."""
        with contextlib.suppress(FileNotFoundError):
            if self._fs is None:
                Path(self.child(relative)).unlink()
            else:
                self._fs.rm_file(self._remote(relative))


def split_location(location: str) -> tuple[Folder, str]:
    """A file's folder and name: ``s3://b/x/a.jpg`` -> (``Folder("s3://b/x")``, ``a.jpg``)."""
    if is_url(location):
        parent, _, name = location.rstrip("/").rpartition("/")
        return Folder(parent), name
    path = Path(location)
    return Folder(str(path.parent)), path.name


def read_file(location: str) -> bytes:
    """The bytes of a file named by a path or URL (see :meth:`Folder.read_bytes`)."""
    folder, name = split_location(location)
    return folder.read_bytes(name)


def _is_local(fs: AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)
