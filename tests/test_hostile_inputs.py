"""Hostile picture input: decompression bombs, output sizes, odd paths, and folders listed in full.

Bombs are only decoded in a child process with an address-space ceiling, so that a regression fails
there (MemoryError) instead of swapping this machine to a halt.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from codeformer.errors import CodeFormerError, OptionError
from codeformer.imageio import (
    DEFAULT_MAX_PIXELS,
    PixelLimitError,
    check_output_pixels,
    decode_image,
    image_size,
    list_images,
    read_image,
    scan_folder,
)
from codeformer.imageio import _pillow_allows  # the one private piece tested: thread-safe restoring

REPO = Path(__file__).resolve().parents[1]
BOMB_SIDE = 30000  # 900 megapixels: 6x the default limit
# What the child may allocate beyond what its imports take: far less than any bomb decodes to.
CHILD_HEADROOM = int(1.5 * 2**30)


# ----------------------------------------------------------------------------------------------------
# Building hostile files cheaply


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit black PNG; its rows are streamed through zlib so the 112 MB of raw rows never exist."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_feed = 1000
    parts = [compressor.compress(row * min(rows_per_feed, height - start)) for start in range(0, height, rows_per_feed)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, gray, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def _small_jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    return data.tobytes()


def jpeg_bomb(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose frame header claims ``width`` x ``height`` (decoders allocate before reading data)."""
    data = bytearray(_small_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_bomb(width: int, height: int) -> bytes:
    """A classic little-endian TIFF header for an uncompressed 8-bit gray picture, with almost no data."""
    strip_offset = 8 + 2 + 9 * 12 + 4
    entries = [  # (tag, type, value): SHORT = 3, LONG = 4
        (256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
        (273, 4, strip_offset), (277, 3, 1), (278, 4, height), (279, 4, width * height),
    ]
    directory = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in entries
    )
    return b"II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + b"\x00" * 64


def webp_bomb(width: int, height: int) -> bytes:
    """A lossless WebP header for ``width`` x ``height`` (at most 16384 each), with almost no data."""
    bits = (width - 1) | (height - 1) << 14
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def bmp_bomb(width: int, height: int) -> bytes:
    """A 24-bit BMP header for ``width`` x ``height``, with almost no data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\x00" * 64


def _encode(extension: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(extension, image)
    assert ok
    return data.tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "png": _write(folder / "bomb.png", png_bomb(BOMB_SIDE, BOMB_SIDE)),
        "jpg": _write(folder / "bomb.jpg", jpeg_bomb(BOMB_SIDE, BOMB_SIDE)),
        "tif": _write(folder / "bomb.tif", tiff_bomb(BOMB_SIDE, BOMB_SIDE)),
        "webp": _write(folder / "bomb.webp", webp_bomb(16383, 16383)),
        "bmp": _write(folder / "bomb.bmp", bmp_bomb(BOMB_SIDE, BOMB_SIDE)),
    }


# ----------------------------------------------------------------------------------------------------
# Decompression bombs, in a child with a memory ceiling

# The package import brings torch, whose mapped libraries alone take more than 1.5 GiB of address
# space: the ceiling is set after the imports, at what they took plus CHILD_HEADROOM, and before any
# decoding. Each argument is "path=limit" ("none" for no limit); one output line per argument.
_CHILD = """
import resource, sys
from codeformer.errors import CodeFormerError
from codeformer.imageio import read_image

def address_space():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))

ceiling = address_space() + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
for argument in sys.argv[2:]:
    path, limit = argument.rsplit("=", 1)
    try:
        read_image(path, max_pixels=None if limit == "none" else int(limit))
    except CodeFormerError as error:
        if len(sys.argv) == 3:
            print(error)
            sys.exit(3)
        print("refused:", error)
    except MemoryError:
        print("MemoryError")
    else:
        print("decoded")
"""

needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")


def _run_child(*arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _CHILD, str(CHILD_HEADROOM), *arguments], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=120)


def _over_limit(path: Path, width: int, height: int) -> str:
    return (f"{path}: {width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is over the limit of "
            f"150 megapixels; raise it with max_pixels if you trust this file")


@needs_linux
def test_png_bomb_is_refused_from_its_header(bombs: dict[str, Path]) -> None:
    assert bombs["png"].stat().st_size < 1_000_000
    child = _run_child(f"{bombs['png']}={DEFAULT_MAX_PIXELS}")
    assert child.returncode == 3, child.stderr
    assert child.stdout == _over_limit(bombs["png"], BOMB_SIDE, BOMB_SIDE) + "\n"
    assert child.stderr == ""  # no traceback, no Pillow DecompressionBombWarning


@needs_linux
def test_bombs_of_every_format_are_refused_and_the_ceiling_bites(bombs: dict[str, Path]) -> None:
    child = _run_child(
        f"{bombs['jpg']}={DEFAULT_MAX_PIXELS}", f"{bombs['tif']}={DEFAULT_MAX_PIXELS}",
        f"{bombs['webp']}={DEFAULT_MAX_PIXELS}", f"{bombs['bmp']}={DEFAULT_MAX_PIXELS}",
        # Control: with no limit, Pillow allocates 3.6 GB for the JPEG bomb and hits the ceiling.
        # This proves that a regression in the checks above would fail here, not swap.
        f"{bombs['jpg']}=none",
    )
    assert child.stderr == ""
    assert child.stdout.splitlines() == [
        "refused: " + _over_limit(bombs["jpg"], BOMB_SIDE, BOMB_SIDE),
        "refused: " + _over_limit(bombs["tif"], BOMB_SIDE, BOMB_SIDE),
        "refused: " + _over_limit(bombs["webp"], 16383, 16383),
        "refused: " + _over_limit(bombs["bmp"], BOMB_SIDE, BOMB_SIDE),
        "MemoryError",
    ]


def test_image_size_reads_bomb_headers_without_decoding(bombs: dict[str, Path]) -> None:
    for kind, path in bombs.items():
        side = 16383 if kind == "webp" else BOMB_SIDE
        assert image_size(path.read_bytes()) == (side, side), kind


@pytest.mark.parametrize("extension", [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"])
def test_image_size_of_real_pictures(extension: str) -> None:
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    assert image_size(_encode(extension, image)) == (64, 48)


@pytest.mark.parametrize(("save_format", "options"), [
    ("JPEG", {"progressive": True}), ("WEBP", {"lossless": True}), ("WEBP", {"exif": Image.Exif().tobytes()}),
    ("TIFF", {"compression": "tiff_lzw"}), ("TIFF", {"big_tiff": True}), ("BMP", {}), ("PNG", {}),
])
def test_image_size_of_format_variants(save_format: str, options: dict) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, save_format, **options)
    assert image_size(buffer.getvalue()) == (64, 48)


def test_image_size_of_other_or_broken_data() -> None:
    assert image_size(b"") is None
    assert image_size(b"GIF89a" + b"\x00" * 32) is None
    assert image_size(_encode(".png", np.zeros((4, 4), np.uint8))[:20]) is None  # cut inside the header
    assert image_size(b"\xff\xd8\xff") is None


def test_a_small_jpeg_frame_header_cannot_hide_a_big_one() -> None:
    # A second frame header: decoders disagree on which one counts, so the largest does.
    data = _small_jpeg()
    sof = data.index(b"\xff\xc0")
    length = struct.unpack(">H", data[sof + 2:sof + 4])[0]
    segment = bytearray(data[sof:sof + 2 + length])
    segment[5:9] = struct.pack(">HH", BOMB_SIDE, BOMB_SIDE)
    forged = data[:sof + 2 + length] + bytes(segment) + data[sof + 2 + length:]
    assert image_size(forged) == (BOMB_SIDE, BOMB_SIDE)


# ----------------------------------------------------------------------------------------------------
# The limit, per call, ahead of Pillow's own


def test_limit_is_per_call_with_exact_message(tmp_path: Path) -> None:
    path = _write(tmp_path / "small.png", _encode(".png", np.zeros((48, 64, 3), np.uint8)))
    with pytest.raises(PixelLimitError) as caught:
        read_image(path, max_pixels=3000)
    error = caught.value
    assert str(error) == (f"{path}: 64x48 pixels (0.0 megapixels) is over the limit of 0.003 megapixels; "
                          "raise it with max_pixels if you trust this file")
    assert (error.width, error.height, error.max_pixels) == (64, 48, 3000)
    assert error.phrased("--max_pixels").endswith("raise it with --max_pixels if you trust this file")
    assert isinstance(error, CodeFormerError)
    assert read_image(path, max_pixels=3072).width == 64  # exactly at the limit is allowed
    assert read_image(path, max_pixels=None).height == 48


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_invalid_limits_are_option_errors(bad: object) -> None:
    with pytest.raises(OptionError, match="^max_pixels .*: must be a whole number of pixels >= 1, or None"):
        decode_image(_small_jpeg(), max_pixels=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("extension", [".jpg", ".png", ".webp", ".tif", ".bmp"])
@pytest.mark.parametrize("pillow_limit", [1000, 6000])
def test_pillows_own_limit_never_fires_warns_or_changes(monkeypatch: pytest.MonkeyPatch, extension: str,
                                                        pillow_limit: int) -> None:
    # Pillow's process-wide limit made tiny: the 8000-pixel picture is over twice 1000, where Pillow
    # refuses, and between 6000 and twice 6000, where it warns.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    data = _encode(extension, np.full((80, 100, 3), 200, np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for max_pixels in (DEFAULT_MAX_PIXELS, None):
            picture = decode_image(data, name=f"x{extension}", max_pixels=max_pixels)
            assert (picture.width, picture.height) == (100, 80)
    assert [str(warning.message) for warning in caught] == []
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_overlapping_lifts_of_pillows_limit_restore_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # As two threads decoding trusted big pictures would: the first to finish must not restore
    # Pillow's limit under the other, and the last one puts back the user's value.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    first, second = _pillow_allows(8000), _pillow_allows(20000)
    first.__enter__()
    second.__enter__()
    assert Image.MAX_IMAGE_PIXELS == 20000
    first.__exit__(None, None, None)
    assert Image.MAX_IMAGE_PIXELS == 20000
    with _pillow_allows(900):  # under the user's 1000: no lift of its own
        assert Image.MAX_IMAGE_PIXELS == 20000
    with _pillow_allows(1500):  # over it: a third lift, which must not lower the second's
        assert Image.MAX_IMAGE_PIXELS == 20000
    second.__exit__(None, None, None)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_pillow_fallback_decodes_over_pillows_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # A TIFF compression OpenCV's libtiff is built without (zstd) goes to Pillow, after image_size.
    buffer = io.BytesIO()
    try:
        Image.new("L", (100, 80), 255).save(buffer, "TIFF", compression="zstd")
    except OSError:
        pytest.skip("this Pillow's libtiff cannot write zstd")
    data = buffer.getvalue()
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None:
        pytest.skip("this OpenCV reads zstd TIFFs: no Pillow fallback to test")
    assert image_size(data) == (100, 80)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        picture = decode_image(data, name="x.tif", max_pixels=None)
    assert (picture.width, picture.height) == (100, 80)
    assert [str(warning.message) for warning in caught] == []
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(PixelLimitError):
        decode_image(data, name="x.tif", max_pixels=7999)


def test_a_format_only_pillow_reads_is_checked_from_pillows_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # TGA: neither image_size nor OpenCV reads it, so Pillow's header reading is the only check.
    buffer = io.BytesIO()
    Image.new("RGB", (100, 80)).save(buffer, "TGA")
    data = buffer.getvalue()
    assert image_size(data) is None
    with pytest.raises(PixelLimitError, match=r"^x\.png: 100x80 pixels \(0\.0 megapixels\) is over the limit of "):
        decode_image(data, name="x.png", max_pixels=1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 8000 pixels: where Pillow warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(data, name="x.png").width == 100
    assert [str(warning.message) for warning in caught] == []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice Pillow's limit: it refuses first
    with pytest.raises(CodeFormerError) as refused:
        decode_image(data, name="x.png", max_pixels=None)
    assert str(refused.value) == ("x.png: over Pillow's limit of 0.002 megapixels for a kind of file whose size "
                                  "cannot be checked first; save it as PNG, TIFF or JPEG")


def test_a_header_only_opencv_reads_is_checked_after_decoding() -> None:
    # PPM: image_size does not read it, so the decoded size is checked instead.
    data = _encode(".ppm", np.zeros((48, 64, 3), np.uint8))
    assert image_size(data) is None
    with pytest.raises(PixelLimitError, match=r"^x\.png: 64x48 pixels \(0\.0 megapixels\) is over the limit of 0\.001"):
        decode_image(data, name="x.png", max_pixels=1000)
    assert decode_image(data, name="x.png").width == 64


# ----------------------------------------------------------------------------------------------------
# Output sizes


def test_check_output_pixels() -> None:
    assert check_output_pixels(512, 512, 2, DEFAULT_MAX_PIXELS) == (1024, 1024)
    assert check_output_pixels(333, 201, 1.5, DEFAULT_MAX_PIXELS) == (500, 302)  # rounded like the upsampler
    assert check_output_pixels(512, 512, 100, None) == (51200, 51200)
    with pytest.raises(PixelLimitError) as caught:
        check_output_pixels(512, 512, 100, DEFAULT_MAX_PIXELS)
    assert str(caught.value) == ("an output of 51200x51200 pixels (2621.4 megapixels) is over the limit of "
                                 "150 megapixels; use a smaller scale, or raise the limit with max_pixels")
    assert (caught.value.width, caught.value.height) == (51200, 51200)
    with pytest.raises(PixelLimitError, match=r"^a\.png: an output of 1000x1000 pixels \(1\.0 megapixels\)"):
        check_output_pixels(100, 100, 10, 999_999, name="a.png")


# ----------------------------------------------------------------------------------------------------
# Paths


@pytest.fixture()
def jpeg_data() -> bytes:
    return _encode(".jpg", np.full((16, 24, 3), 128, np.uint8))


def _refused(path: str | Path, message: str) -> None:
    with pytest.raises(CodeFormerError) as caught:
        read_image(path)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "self.jpg").symlink_to("self.jpg")
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    _refused(tmp_path / "self.jpg", f"{tmp_path / 'self.jpg'}: cannot read (symlink loop)")
    _refused(tmp_path / "a.jpg", f"{tmp_path / 'a.jpg'}: cannot read (symlink loop)")


def test_missing_files_and_broken_links(tmp_path: Path) -> None:
    (tmp_path / "dangling.jpg").symlink_to("gone.jpg")
    _refused(tmp_path / "dangling.jpg", f"{tmp_path / 'dangling.jpg'}: cannot read (broken link)")
    _refused(tmp_path / "gone.jpg", f"{tmp_path / 'gone.jpg'}: cannot read (no such file)")
    _refused(tmp_path / "gone" / "x.jpg", f"{tmp_path / 'gone' / 'x.jpg'}: cannot read (no such file)")


def test_folders_and_special_files(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    _refused(tmp_path / "folder.jpg", f"{tmp_path / 'folder.jpg'}: a folder, not a picture file")
    (tmp_path / "to_folder.jpg").symlink_to("folder.jpg")
    _refused(tmp_path / "to_folder.jpg", f"{tmp_path / 'to_folder.jpg'}: a folder, not a picture file")
    _refused("x\0.jpg", "'x\\x00.jpg': not a valid file name")
    if Path("/dev/zero").exists():  # read whole, it would never end
        (tmp_path / "zero.jpg").symlink_to("/dev/zero")
        _refused(tmp_path / "zero.jpg", f"{tmp_path / 'zero.jpg'}: a device, not a picture file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_named_pipe_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")

    def hung(_signal: int, _frame: object) -> None:
        raise TimeoutError("read_image waited on a named pipe")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        _refused(tmp_path / "pipe.jpg", f"{tmp_path / 'pipe.jpg'}: a named pipe, not a picture file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path: Path, jpeg_data: bytes) -> None:
    path = _write(tmp_path / "locked.jpg", jpeg_data)
    path.chmod(0)
    try:
        _refused(path, f"{path}: cannot read (permission denied)")
    finally:
        path.chmod(0o644)


def test_permission_denied_as_the_os_reports_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                jpeg_data: bytes) -> None:
    # Runs where the real test cannot (as root): the message for the error the OS raises.
    path = _write(tmp_path / "locked.jpg", jpeg_data)

    def denied(*_arguments: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", denied)
    _refused(path, f"{path}: cannot read (permission denied)")


def test_leading_dash_names_read_fine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, jpeg_data: bytes) -> None:
    path = _write(tmp_path / "-x.jpg", jpeg_data)
    monkeypatch.chdir(tmp_path)
    assert read_image("-x.jpg").width == 24
    assert read_image(path).height == 16


def test_inputs_are_never_modified(tmp_path: Path, jpeg_data: bytes) -> None:
    path = _write(tmp_path / "a.jpg", jpeg_data)
    before = path.stat()
    read_image(path)
    after = path.stat()
    assert path.read_bytes() == jpeg_data
    assert (after.st_mtime_ns, after.st_size, after.st_mode) == (before.st_mtime_ns, before.st_size, before.st_mode)


# ----------------------------------------------------------------------------------------------------
# Folders


def test_scan_folder_accounts_for_every_entry(tmp_path: Path, jpeg_data: bytes) -> None:
    png, webp = (_encode(extension, np.zeros((8, 8, 3), np.uint8)) for extension in (".png", ".webp"))
    for name, data in [("a.jpg", jpeg_data), ("B.PNG", png), ("c.webp", webp),
                       ("-dash.jpg", jpeg_data), ("anim.gif", b"GIF89a"), ("notes.txt", b"hi"), ("README", b"hi"),
                       (".hidden.jpg", jpeg_data)]:
        _write(tmp_path / name, data)
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "link_to_a.jpg").symlink_to("a.jpg")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "dangling.png").symlink_to("missing.png")
    (tmp_path / "here").symlink_to(".")  # a folder link that loops: never searched
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")

    scan = scan_folder(tmp_path)

    assert [p.name for p in scan.images] == ["-dash.jpg", "B.PNG", "a.jpg", "c.webp", "link_to_a.jpg"]
    expected_skipped = [
        ("README", "not a picture this command reads (no extension)"),
        ("anim.gif", "not a picture this command reads (.gif)"),
        ("dangling.png", "broken link"),
        ("here", "a folder (not searched)"),
        ("loop.jpg", "symlink loop"),
        ("notes.txt", "not a picture this command reads (.txt)"),
        ("pipe.jpg", "a named pipe, not a file"),
        ("sub", "a folder (not searched)"),
    ]
    if not hasattr(os, "mkfifo"):
        expected_skipped.remove(("pipe.jpg", "a named pipe, not a file"))
    assert [(p.name, why) for p, why in scan.skipped] == expected_skipped
    assert [p.name for p in scan.hidden] == [".git", ".hidden.jpg"]
    assert len(scan.images) + len(scan.skipped) + len(scan.hidden) == len(os.listdir(tmp_path))
    assert all(p.parent == tmp_path for p in scan.images + scan.hidden + [p for p, _ in scan.skipped])
    assert list_images(tmp_path) == scan.images
    for path in scan.images:
        read_image(path)


def test_scan_folder_of_what_is_not_a_folder(tmp_path: Path, jpeg_data: bytes) -> None:
    with pytest.raises(CodeFormerError, match=r": cannot list folder \(no such file\)$"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(CodeFormerError, match=r": cannot list folder \(not a folder\)$"):
        scan_folder(_write(tmp_path / "a.jpg", jpeg_data))
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(CodeFormerError, match=r": cannot list folder \(symlink loop\)$"):
        scan_folder(tmp_path / "loop")
    assert scan_folder(tmp_path).images == [tmp_path / "a.jpg"]


# ----------------------------------------------------------------------------------------------------
# What must not change


def test_exif_orientation_is_applied_to_jpeg_and_png() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to display
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :5] = 255  # a white band on the left
    for save_format in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, save_format, exif=exif.tobytes(), quality=95)
        picture = decode_image(buffer.getvalue())
        assert (picture.width, picture.height) == (20, 40), save_format
        assert picture.bgr[:5].mean() > 200 and picture.bgr[-5:].mean() < 50, save_format  # band now on top


def test_depth_alpha_and_gray_are_kept() -> None:
    deep = decode_image(_encode(".png", np.full((8, 8, 3), 40000, np.uint16)))
    assert deep.is_16bit and int(deep.bgr[0, 0, 0]) == 40000
    rgba = decode_image(_encode(".png", np.dstack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 77, np.uint8)])))
    assert rgba.source_channels == 4 and rgba.alpha is not None and int(rgba.alpha[0, 0]) == 77
    gray = decode_image(_encode(".png", np.full((8, 8), 9, np.uint8)))
    assert gray.source_channels == 1 and gray.alpha is None and gray.bgr.shape == (8, 8, 3)


def test_truncated_and_empty_files_are_refused() -> None:
    data = _encode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(CodeFormerError, match=r"^t\.jpg: not a readable picture"):
        decode_image(data[: len(data) // 2], name="t.jpg")
    with pytest.raises(CodeFormerError, match=r"^e\.png: file is empty$"):
        decode_image(b"", name="e.png")
