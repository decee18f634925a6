"""The inputs a job names: one picture, or a folder's pictures, with every other entry accounted for.

Local folders are scanned by :func:`codeformer.imageio.scan_folder` (hidden files aside, every entry
is either a picture or listed with why it is not read: not a picture, broken link, sub-folder ...),
so a run's summary adds up to the folder. fsspec URLs (``s3://``, ``gs://``, ``file://``), which
Ray jobs take, are listed through :mod:`codeformer.jobs.storage`. Any problem with the location
itself is one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codeformer.errors import CodeFormerError
from codeformer.imageio import IMAGE_EXTENSIONS, SKIP_FOLDER, is_image_path
from codeformer.jobs.storage import Folder, is_url, split_location

__all__ = ["Inputs", "collect_pictures", "list_pictures"]


@dataclass
class Inputs:
    """The pictures an input path names, and the folder entries that are not read (with why)."""

    pictures: list[Path]
    skipped: list[tuple[Path, str]]


def collect_pictures(input_path: str) -> Inputs:
    """The pictures an input path names: one file, or a folder's pictures sorted by name.

    Every other entry of a folder is listed in ``skipped`` with its reason (hidden files aside), so
    the run's summary accounts for the whole folder. Any problem with the path is one line.
    """
    from codeformer.imageio import path_problem, scan_folder

    path = Path(input_path)
    kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
    if path.is_dir():
        scan = scan_folder(path)
        if not scan.images:
            others = f" ({len(scan.skipped)} other entries skipped)" if scan.skipped else ""
            raise CodeFormerError(f"no pictures ({kinds}) in folder {path}{others}")
        return Inputs(scan.images, scan.skipped)
    if path.is_file():
        if not is_image_path(path):
            raise CodeFormerError(f"{path} is not a picture this command reads ({kinds})")
        return Inputs([path], [])
    try:
        path.stat()
    except OSError as error:
        problem = path_problem(path, error)
        if problem == "no such file":
            raise CodeFormerError(f"input path {path} does not exist") from None
        raise CodeFormerError(f"input path {path}: {problem}") from None
    except ValueError:
        raise CodeFormerError(f"input path {input_path!r} is not a valid file name") from None
    raise CodeFormerError(f"input path {path} is neither a picture, a video nor a folder")


def list_pictures(location: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The pictures a path or URL names: one file, or a folder's pictures sorted by name.

    Returns (pictures, other entries with why each is not read); hidden entries are left out, as
    :func:`codeformer.imageio.scan_folder` does for local folders.
    """
    if not is_url(location):
        collected = collect_pictures(location)
        return [str(path) for path in collected.pictures], [(str(path), why) for path, why in collected.skipped]
    folder = Folder(location)
    kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
    if not folder.is_folder():
        parent, name = split_location(location)
        if not parent.exists(name):
            raise CodeFormerError(f"input path {location} does not exist")
        if not is_image_path(name):
            raise CodeFormerError(f"{location} is not a picture this command reads ({kinds})")
        return [location], []
    pictures, skipped = [], []
    for name, is_file in folder.entries():
        if name.startswith("."):
            continue
        child = folder.child(name)
        if not is_file:
            skipped.append((child, SKIP_FOLDER))
        elif not is_image_path(name):
            skipped.append((child, f"not a picture this command reads ({Path(name).suffix or 'no extension'})"))
        else:
            pictures.append(child)
    if not pictures:
        others = f" ({len(skipped)} other entries skipped)" if skipped else ""
        raise CodeFormerError(f"no pictures ({kinds}) in folder {location}{others}")
    return pictures, skipped
