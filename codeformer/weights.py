"""Pretrained files: one table, one downloader, one safe loader.

Every pretrained file the project can use is listed once, in :data:`WEIGHTS`, with its URL, sha256,
size and license. No URL appears anywhere else in the code.

Files live under a weights root laid out like the reference repository's ``weights/`` folder
(``CodeFormer/``, ``facelib/``, ``dlib/``, ``realesrgan/``). The root is, in order: the
``--weights_dir`` option, the ``CODEFORMER_WEIGHTS_DIR`` environment variable, ``./weights``.

A file already in place is checked once against its sha256 (the table's, or for files whose hash
is not published the one recorded at their first download, in ``<file>.sha256``); the result is
remembered in ``<root>/.checked.json`` against the file's size and modification time, so a 377 MB
file is hashed once, not on every run. A file that does not match is used with a warning (it may
be the user's own fine-tuned copy); a truncated one is refused, naming the command that fetches it
again. A missing file is downloaded on first use: to a ``.part`` file next to its destination,
hashed while it streams, checked and only then renamed into place, so an interrupted or corrupted
download never leaves a file under the final name. Network calls time out instead of hanging.
:func:`ensure_weights` fetches every file a job needs before any work, and when they cannot be
downloaded lists all of them (URL, destination, size) in one message with the command to fetch them.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import logging
import os
import pickle
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Mapping, Sequence

from tqdm import tqdm

from codeformer._atomic import atomic_path
from codeformer.errors import CodeFormerError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "CODEFORMER_WEIGHTS_DIR"
# A base URL laid out like the weights root (<mirror>/CodeFormer/codeformer.pth, ...), for users
# behind a firewall or far from GitHub, and for the tests' local HTTP server.
WEIGHTS_MIRROR_ENV = "CODEFORMER_WEIGHTS_MIRROR"
DEFAULT_WEIGHTS_DIR = "weights"
# Seconds a connection attempt or a single read may block before the download is abandoned.
DOWNLOAD_TIMEOUT_S = 30.0
# Read size while streaming and hashing: large enough to be fast, small enough for steady progress.
CHUNK_BYTES = 1 << 20
# Beside a file whose sha256 is not published: the sha256 of its first download, which later runs check.
RECORD_SUFFIX = ".sha256"
# In the weights root: the sha256 of each file in place, by size and modification time (hashed once).
CHECKS_NAME = ".checked.json"
# The command that fetches files ahead of time, as the README gives it.
DOWNLOAD_COMMAND = "python scripts/download_pretrained_models.py"

_RELEASE = "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0"
_GPEN_BUCKET = "https://public-vigen-video.oss-cn-shanghai.aliyuncs.com/robin/models"
# GPEN-BFR-1024 and -2048 were published on ModelScope by the authors' lab (Alibaba DAMO).
_GPEN_HIRES = ("https://modelscope.cn/api/v1/models/damo/cv_gpen_image-portrait-enhancement-hires/repo"
               "?Revision=master&FilePath=")
# The GPEN repository has no licence file; its README said "For academic and non-commercial use only"
# until March 2026 and still calls the released files restricted "due to commercial issues".
_GPEN_LICENSE = "non-commercial (GPEN's README: academic and non-commercial use only)"
_CODEFORMER_LICENSE = "S-Lab License 1.0 (non-commercial)"
_DLIB_LICENSE = "public domain (dlib-models, Davis E. King)"


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: where it goes in the weights root and how to fetch and check it."""

    key: str  # path relative to the weights root, e.g. "CodeFormer/codeformer.pth"
    url: str
    sha256: str | None  # None where none is published: the first download records its own (RECORD_SUFFIX)
    size: int | None  # bytes; None where no trustworthy size is published
    license: str
    description: str
    # File name inside the PyPI package face-recognition-models (byte-identical copy), if it ships one.
    packaged_as: str | None = None
    # False for files no command of this project uses (kept so the table mirrors the published set).
    used: bool = True

    @property
    def group(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def _table(*files: WeightFile) -> Mapping[str, WeightFile]:
    return MappingProxyType({f.key: f for f in files})


WEIGHTS: Mapping[str, WeightFile] = _table(
    WeightFile(
        "CodeFormer/codeformer.pth", f"{_RELEASE}/codeformer.pth",
        "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", 376637898,
        _CODEFORMER_LICENSE, "CodeFormer face restoration",
    ),
    WeightFile(
        "CodeFormer/codeformer_colorization.pth", f"{_RELEASE}/codeformer_colorization.pth",
        "4f041f194fe17cc128d7c76526fe45689079ce5f5811e1441ccfd3d5aec4693d", 372359475,
        _CODEFORMER_LICENSE, "CodeFormer face colorization",
    ),
    WeightFile(
        "CodeFormer/codeformer_inpainting.pth", f"{_RELEASE}/codeformer_inpainting.pth",
        "b0d1b868c3dacf75d637bbcc0d4b3dd4ce2a064a338dfb4d35c740d3b4ae8797", 370786611,
        _CODEFORMER_LICENSE, "CodeFormer face inpainting",
    ),
    WeightFile(
        "CodeFormer/vqgan_code1024.pth", f"{_RELEASE}/vqgan_code1024.pth",
        "4d1c6741b3cffcbdc2cd1a12b2c3c2442282e042d5de66909cb643d4fa31b20f", 255078528,
        _CODEFORMER_LICENSE, "VQGAN face autoencoder (1024 codes)",
    ),
    WeightFile(
        "facelib/detection_Resnet50_Final.pth", f"{_RELEASE}/detection_Resnet50_Final.pth",
        "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", 109497761,
        "MIT (Pytorch_Retinaface)", "RetinaFace ResNet-50 face detector",
    ),
    WeightFile(
        "facelib/detection_mobilenet0.25_Final.pth",
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
        "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220", 1789735,
        "MIT (Pytorch_Retinaface)", "RetinaFace MobileNet-0.25 face detector",
    ),
    WeightFile(
        "facelib/parsing_parsenet.pth", f"{_RELEASE}/parsing_parsenet.pth",
        "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2", 85331193,
        "research use (PSFR-GAN ParseNet, via facexlib)", "ParseNet face parsing",
    ),
    WeightFile(
        "facelib/parsing_bisenet.pth",
        "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
        "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567", 53289463,
        "MIT (face-parsing.PyTorch, via facexlib)", "BiSeNet face parsing", used=False,
    ),
    WeightFile(
        "facelib/yolov5l-face.pth", f"{_RELEASE}/yolov5l-face.pth",
        "1ba9d2125fda4d823df5152b9fc2903c59aa76c0d3771e02bcf13a56a282cf96", 186973013,
        "GPL-3.0 (yolov5-face)", "YOLOv5-L face detector",
    ),
    WeightFile(
        "facelib/yolov5n-face.pth", f"{_RELEASE}/yolov5n-face.pth",
        "d2bbfbe9f36cf1ec345dc69658d7209e5448a676d946f1bf7818ac50d4489357", None,
        "GPL-3.0 (yolov5-face)", "YOLOv5-N face detector",
    ),
    WeightFile(
        "dlib/mmod_human_face_detector-4cb19393.dat", f"{_RELEASE}/mmod_human_face_detector-4cb19393.dat",
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6", 729940,
        _DLIB_LICENSE, "dlib CNN (MMOD) face detector", packaged_as="mmod_human_face_detector.dat",
    ),
    WeightFile(
        "dlib/shape_predictor_5_face_landmarks-c4b1e980.dat",
        f"{_RELEASE}/shape_predictor_5_face_landmarks-c4b1e980.dat",
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888", 9150489,
        _DLIB_LICENSE, "dlib 5-point face landmarks", packaged_as="shape_predictor_5_face_landmarks.dat",
    ),
    WeightFile(
        "dlib/shape_predictor_68_face_landmarks-fbdc2cb8.dat",
        f"{_RELEASE}/shape_predictor_68_face_landmarks-fbdc2cb8.dat",
        "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f", 99693937,
        "non-commercial (trained on iBUG 300-W)", "dlib 68-point face landmarks",
        packaged_as="shape_predictor_68_face_landmarks.dat",
    ),
    WeightFile(
        "realesrgan/RealESRGAN_x2plus.pth", f"{_RELEASE}/RealESRGAN_x2plus.pth",
        "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", 67061725,
        "BSD-3-Clause (Real-ESRGAN)", "Real-ESRGAN x2 background upsampler",
    ),
    WeightFile(
        "realesrgan/RealESRGAN_x4plus.pth",
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67040989,
        "BSD-3-Clause (Real-ESRGAN)", "Real-ESRGAN x4 upsampler", used=False,
    ),
    WeightFile(
        "gfpgan/GFPGANv1.3.pth", "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.3.pth",
        "c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70", 348632874,
        "Apache-2.0 (GFPGAN)", "GFPGAN v1.3 face restoration",
    ),
    WeightFile(
        "gfpgan/GFPGANv1.4.pth", "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",
        "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348632874,
        "Apache-2.0 (GFPGAN)", "GFPGAN v1.4 face restoration",
    ),
    # No sha256 is published for these: the first download records its own (RECORD_SUFFIX).
    WeightFile(
        "gpen/GPEN-BFR-256.pth", f"{_GPEN_BUCKET}/GPEN-BFR-256.pth", None, None,
        _GPEN_LICENSE, "GPEN-BFR 256 face restoration",
    ),
    WeightFile(
        "gpen/GPEN-BFR-512.pth", f"{_GPEN_BUCKET}/GPEN-BFR-512.pth", None, None,
        _GPEN_LICENSE, "GPEN-BFR 512 face restoration",
    ),
    WeightFile(
        "gpen/GPEN-BFR-1024.pth", f"{_GPEN_HIRES}pytorch_model.pt", None, None,
        _GPEN_LICENSE, "GPEN-BFR 1024 face restoration",
    ),
    WeightFile(
        "gpen/GPEN-BFR-2048.pth", f"{_GPEN_HIRES}pytorch_model-2048.pt", None, None,
        _GPEN_LICENSE, "GPEN-BFR 2048 face restoration",
    ),
    WeightFile(
        "restoreformer/RestoreFormer++.ckpt",
        "https://github.com/wzhouxiff/RestoreFormerPlusPlus/releases/download/v1.0.0/RestoreFormer++.ckpt",
        None, None, "Apache-2.0 (RestoreFormerPlusPlus)", "RestoreFormer++ face restoration",
    ),
)

# Folders of the weights root that `download_pretrained_models.py` knows by name, in display order.
WEIGHT_GROUPS: tuple[str, ...] = ("CodeFormer", "facelib", "dlib", "realesrgan", "gfpgan", "gpen", "restoreformer")


def weight_entry(key: str) -> WeightFile:
    """The table entry for ``key`` (a path relative to the weights root)."""
    try:
        return WEIGHTS[key]
    except KeyError:
        known = ", ".join(WEIGHTS)
        raise CodeFormerError(f"unknown pretrained file {key!r}; known files: {known}") from None


def group_entries(group: str, *, include_unused: bool = False) -> list[WeightFile]:
    """The files of one weights-root folder (``"all"``: every group), those the commands use by default."""
    if group != "all" and group not in WEIGHT_GROUPS:
        raise CodeFormerError(f"unknown weights group {group!r}; choose from {', '.join(WEIGHT_GROUPS)}, all")
    groups = WEIGHT_GROUPS if group == "all" else (group,)
    return [w for w in WEIGHTS.values() if w.group in groups and (w.used or include_unused)]


def resolve_weights_dir(weights_dir: str | os.PathLike[str] | None = None) -> Path:
    """The weights root: ``weights_dir``, else ``$CODEFORMER_WEIGHTS_DIR``, else ``./weights`` (absolute)."""
    chosen = weights_dir if weights_dir else os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR
    return Path(chosen).expanduser().absolute()


def packaged_model_file(filename: str) -> Path | None:
    """A model file the installed face-recognition-models package ships (dlib's models), if any."""
    # Located without importing: the package's __init__ needs pkg_resources, absent on new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "models" / filename
    return candidate if candidate.is_file() else None


def packaged_copy(entry: WeightFile) -> Path | None:
    """The byte-identical copy an installed face-recognition-models package ships, if any."""
    return None if entry.packaged_as is None else packaged_model_file(entry.packaged_as)


def download_url(entry: WeightFile) -> str:
    """Where ``entry`` is fetched from: the mirror in ``$CODEFORMER_WEIGHTS_MIRROR`` if set, else its URL."""
    mirror = os.environ.get(WEIGHTS_MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{entry.key}" if mirror else entry.url


def weight_path(
    key: str,
    weights_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Local path of a pretrained file, downloading (and verifying) it on first use.

    Order: the file in the weights root (checked once, see :func:`check_in_place`), the copy an
    installed package ships (dlib files in face-recognition-models), a verified download into the
    weights root.
    """
    entry = weight_entry(key)
    root = resolve_weights_dir(weights_dir)
    destination = root / entry.key
    if destination.is_file():
        check_in_place(entry, root)
        return destination
    packaged = packaged_copy(entry)
    if packaged is not None:
        logger.debug("using %s from face-recognition-models: %s", entry.key, packaged)
        return packaged
    if not download:
        raise CodeFormerError(
            f"{entry.filename} is missing: download {entry.url} and save it as {destination}"
        )
    path = download_file(
        download_url(entry), destination, sha256=entry.sha256, size=entry.size,
        progress=progress, timeout=timeout, manual_url=entry.url,
    )
    if entry.sha256 is None:
        _record_path(path).write_text(sha256_file(path) + "\n", encoding="ascii")
    return path


# ------------------------------------------------------------------------------------------ in place


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def expected_sha256(entry: WeightFile, weights_dir: str | os.PathLike[str] | None = None) -> tuple[str | None, str]:
    """The sha256 a file is checked against and where it comes from: ``published``, ``first download`` or ``none``."""
    if entry.sha256 is not None:
        return entry.sha256, "published"
    record = _record_path(resolve_weights_dir(weights_dir) / entry.key)
    try:
        recorded = record.read_text(encoding="ascii").strip()
    except OSError:
        return None, "none"
    return recorded or None, "first download" if recorded else "none"


def _in_place_sha256(root: Path, key: str, path: Path) -> tuple[str, bool]:
    """The file's sha256, from the root's record when size and time still match; (sha256, hashed now)."""
    stat = path.stat()
    checks_file = root / CHECKS_NAME
    try:
        checks = json.loads(checks_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        checks = {}
    known = checks.get(key) if isinstance(checks, dict) else None
    if isinstance(known, dict) and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return str(known.get("sha256")), False
    digest = sha256_file(path)
    checks = checks if isinstance(checks, dict) else {}
    checks[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        with atomic_path(checks_file) as temporary:
            Path(temporary).write_text(json.dumps(checks, indent=1, sort_keys=True), encoding="utf-8")
    except OSError:  # a read-only weights root: hashed again next time, nothing else changes
        logger.debug("cannot record the check of %s in %s", key, checks_file)
    return digest, True


def check_in_place(entry: WeightFile, weights_dir: str | os.PathLike[str] | None = None) -> None:
    """Check a file already in the weights root against its sha256, once per change of the file.

    A file that does not match is used with a warning, given the first time it is seen (it may be
    the user's own fine-tuned copy); a truncated one (shorter than published, and not a whole
    archive) raises :class:`CodeFormerError` naming the file and the command that fetches it again.
    """
    root = resolve_weights_dir(weights_dir)
    path = root / entry.key
    expected, source = expected_sha256(entry, root)
    if expected is None:
        return
    size = path.stat().st_size
    if entry.size is not None and size < entry.size and not zipfile.is_zipfile(path):
        raise CodeFormerError(
            f"{path} is incomplete ({size} of {entry.size} bytes): delete it and fetch it again with "
            f"{DOWNLOAD_COMMAND} {entry.key}"
        )
    digest, hashed_now = _in_place_sha256(root, entry.key, path)
    if digest != expected and hashed_now:
        logger.warning(
            "%s does not match the %s sha256 (%s...): it is used as it is (your own fine-tuned file?); if it "
            "is not, delete it and fetch it again with %s %s", path, source, expected[:12], DOWNLOAD_COMMAND, entry.key,
        )


# ------------------------------------------------------------------------------------------ missing files


def _missing(keys: Sequence[str], root: Path) -> list[WeightFile]:
    return [entry for entry in map(weight_entry, dict.fromkeys(keys))
            if not (root / entry.key).is_file() and packaged_copy(entry) is None]


def missing_weights_message(entries: Sequence[WeightFile], root: Path, reason: str) -> str:
    """One message for every missing file: URL, destination and size each, and the command that fetches them."""
    groups = " ".join(dict.fromkeys(entry.group for entry in entries))
    lines = [f"{len(entries)} pretrained file{'s are' if len(entries) != 1 else ' is'} missing and cannot be "
             f"downloaded here ({reason}):"]
    for entry in entries:
        size = f"{entry.size / 1e6:.1f} MB" if entry.size else "size not published"
        lines.append(f"  {entry.url} -> {root / entry.key} ({size})")
    lines.append(f"fetch them on a machine with internet with `{DOWNLOAD_COMMAND} {groups}` and copy them here, "
                 "or download each URL above and save it at its path")
    return "\n".join(lines)


class DownloadError(CodeFormerError):
    """A download that failed on the way (network, server, disk); ``reason`` says why in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class MissingWeightsError(CodeFormerError):
    """Pretrained files a job needs that are not here and cannot be downloaded: the message lists them all."""

    def __init__(self, entries: Sequence[WeightFile], root: Path, reason: str) -> None:
        self.entries, self.root = tuple(entries), root
        super().__init__(missing_weights_message(entries, root, reason))


def ensure_weights(keys: Sequence[str], weights_dir: str | os.PathLike[str] | None = None, *,
                   progress: bool = True) -> None:
    """Make sure every file in ``keys`` is here before any work: download the missing ones.

    When one cannot be downloaded, :class:`MissingWeightsError` lists every file still missing,
    not only the first.
    """
    root = resolve_weights_dir(weights_dir)
    missing = _missing(keys, root)
    for entry in missing:
        try:
            weight_path(entry.key, root, progress=progress)
        except CodeFormerError as error:
            still = _missing([entry.key for entry in missing], root)
            reason = error.reason if isinstance(error, DownloadError) else str(error)
            raise MissingWeightsError(still, root, reason) from None


def download_file(
    url: str,
    destination: Path,
    *,
    sha256: str | None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    manual_url: str | None = None,
) -> Path:
    """Download ``url`` to ``destination`` through a ``.part`` file, checking its sha256 before the rename.

    Raises :class:`CodeFormerError` (and leaves nothing behind) when the network fails, the server
    stalls for ``timeout`` seconds, or the content does not match ``sha256``.
    """
    manual_url = manual_url or url
    destination = Path(destination)
    by_hand = f"download {manual_url} by hand and save it as {destination}"
    logger.info("downloading %s to %s", url, destination)
    try:
        with atomic_path(destination, suffix=".part") as part:
            with open(part, "xb") as sink:
                digest = _stream(url, sink, timeout=timeout, progress=progress, label=destination.name, size=size)
            if sha256 is not None and digest != sha256:
                raise CodeFormerError(
                    f"{destination.name} from {url} has sha256 {digest}, expected {sha256} (corrupted or "
                    f"changed download); try again, or {by_hand}"
                )
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError, OSError) as error:
        reason = _reason(error)
        raise DownloadError(f"cannot download {destination.name} ({reason}): {by_hand}", reason) from None
    return destination


def _stream(url: str, sink: IO[bytes], *, timeout: float, progress: bool, label: str, size: int | None) -> str:
    """Copy ``url`` into ``sink`` in chunks, returning the sha256 of what was written."""
    digest = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "codeformer-weights"})
    # `timeout` bounds the connection and every read, so a stalled server raises instead of hanging.
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        announced = int(length) if length and length.isdigit() else None
        with tqdm(total=announced or size, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                  disable=not progress, leave=False) as bar:
            while chunk := response.read(CHUNK_BYTES):
                sink.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if announced is not None and received != announced:
        raise ConnectionError(f"connection closed after {received} of {announced} bytes")
    return digest.hexdigest()


def _reason(error: BaseException) -> str:
    """A short, single-line description of a network error."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
        if not isinstance(error, BaseException):
            return str(error)
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "the server stopped answering (timed out)"
    if isinstance(error, http.client.IncompleteRead):
        return f"connection closed after {len(error.partial)} bytes"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    entry: WeightFile
    path: Path | None  # None when the file is not present
    ok: bool
    detail: str  # "ok", "missing", or what is wrong


def verify_weight(entry: WeightFile, weights_dir: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Check the file in the weights root (or the packaged copy) against its sha256: the published one,
    or the one recorded at its first download (the detail says which)."""
    path = resolve_weights_dir(weights_dir) / entry.key
    if not path.is_file():
        path = packaged_copy(entry)
        if path is None:
            return VerifyResult(entry, None, False, "missing")
    expected, source = expected_sha256(entry, weights_dir)
    if expected is None:
        return VerifyResult(entry, path, False, "no sha256 is published and none was recorded at a download: "
                                                "cannot be checked (delete it and download it again to record one)")
    digest = sha256_file(path)
    if digest != expected:
        return VerifyResult(entry, path, False, f"sha256 {digest} does not match the {source} {expected}")
    return VerifyResult(entry, path, True, f"ok ({source} sha256)")


# Keys under which training frameworks wrap the weights, in order of preference: BasicSR's EMA
# weights are what the official files are evaluated with.
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")


def _torch_load(path: Path, map_location: str | torch.device) -> object:
    """``torch.load`` of tensors only, memory-mapped where the file's format allows.

    Mapped, the file's pages are read straight into the tensors that keep them (networks built with
    ``assign=True``) or copied once into the network's own, and unmapped when the state dict goes:
    no second copy of the checkpoint stays in the process heap. Files in PyTorch's legacy
    (pre-zip) format cannot be mapped and are read the usual way.
    """
    import torch  # here, not at the top: the weight table and downloads need no torch (a detection process)

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location=map_location, weights_only=True)


def load_state_dict(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (no arbitrary unpickling) and return its bare state dict.

    Unwraps ``params_ema`` (else ``params``, ``state_dict``, ``model``) and strips a ``module.``
    prefix left by ``DataParallel``. ``.safetensors`` files are read with safetensors. A missing,
    corrupt, truncated or foreign file raises :class:`CodeFormerError` naming the file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CodeFormerError(f"checkpoint {path} does not exist")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device=str(map_location))
        else:
            loaded = _torch_load(path, map_location)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, zipfile.BadZipFile,
            AttributeError, TypeError, KeyError, IndexError, UnicodeDecodeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CodeFormerError(
            f"cannot read checkpoint {path} ({first_line}): the file is corrupt, truncated or not a "
            "PyTorch checkpoint (if it was downloaded, delete it and run again to fetch it anew)"
        ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not loaded or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise CodeFormerError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_strict(
    network: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str], what: str
) -> None:
    """Load ``state`` into ``network`` with every name and shape matching, else a one-line error naming the file."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = (str(error).strip().splitlines() or ["mismatch"])[0][:200]
        raise CodeFormerError(
            f"{path} is not a {what} checkpoint ({first_line}); if it was downloaded, delete it and run again"
        ) from None
