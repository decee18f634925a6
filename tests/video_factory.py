"""Short synthetic video clips for tests, written with PyAV (no external ffmpeg).

``make_clip`` writes a clip whose container follows the file extension, with optional sine-wave
audio, variable frame timing and a display-rotation tag; ``face_image`` gives a real photo with a
face (``skimage.data.astronaut``, public domain) as frame content. Other test files can import
these helpers to build inputs for the video pipeline.
"""

from __future__ import annotations

import signal
import struct
from fractions import Fraction
from pathlib import Path
from typing import Literal, Optional, Union

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

AudioCodec = Literal["aac", "pcm_s16le", "mp3", "ac3", "opus"]

# Audio of every clip: a 440 Hz sine (concert A) in stereo at 48 kHz, a rate every codec here takes.
AUDIO_RATE = 48_000
AUDIO_TONE_HZ = 440.0
AUDIO_AMPLITUDE = 0.3  # well below full scale, so lossy codecs never clip it
AUDIO_CHUNK = 1024  # samples per frame handed to the encoder (PyAV re-chunks to the codec's size)

# Variable frame rate clips repeat these frame durations, in units of 1/fps: 1, 2, 1, 3 frames.
VFR_PATTERN = (1, 2, 1, 3)
# Time base of variable frame rate clips: fine enough for every duration above at usual rates.
VFR_TIME_BASE = Fraction(1, 90_000)

# Per-frame motion: the picture slides this many pixels right per frame (wrapping around).
MOTION_PX_PER_FRAME = 2
NOISE_SIGMA = 2.0  # grey levels of Gaussian noise, so frames differ even without motion

# Video encoder per container extension. mpeg4 in .avi and VP9 in .webm give the decoder other
# codecs than H.264.
_VIDEO_CODECS = {
    ".mp4": "libx264",
    ".m4v": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".avi": "mpeg4",
    ".webm": "libvpx-vp9",
}
# Near-lossless settings so that clip content survives encoding; speed matters more than size.
_VIDEO_OPTIONS = {
    "libx264": {"crf": "12", "preset": "veryfast"},
    "mpeg4": {},
    "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
}
MPEG4_QSCALE = 2  # mpeg4 quantiser: 2 is visually lossless
AVCOL_SPC_BT709 = 1  # AVColorSpace tag of the BT.709 matrix (libavutil/pixfmt.h)
AVCOL_RANGE_MPEG = 1  # AVColorRange: limited range

# Byte offset of the 3x3 display matrix inside a version-0 'tkhd' box, counted from the box type:
# type(4) version/flags(4) creation(4) modification(4) track_ID(4) reserved(4) duration(4)
# reserved(8) layer(2) alternate_group(2) volume(2) reserved(2).
_TKHD_MATRIX_OFFSET = 44
_FIXED_16_16 = 1 << 16  # 1.0 in the matrix's 16.16 fixed-point entries
_FIXED_2_30 = 1 << 30  # 1.0 in its 2.30 fixed-point third column


def face_image(size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """Return the astronaut photo (a face, public domain) as BGR uint8, resized to ``size``.

    ``size`` is ``(width, height)``; the photo is centre-cropped to that aspect ratio first.
    """
    from skimage import data

    rgb = data.astronaut()  # (512, 512, 3) RGB uint8
    width, height = size
    src_h, src_w = rgb.shape[:2]
    scale = min(src_w / width, src_h / height)
    crop_w, crop_h = round(width * scale), round(height * scale)
    x0, y0 = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    crop = rgb[y0 : y0 + crop_h, x0 : x0 + crop_w]
    resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized[:, :, ::-1])  # RGB -> BGR


def gradient_image(size: tuple[int, int]) -> np.ndarray:
    """A smooth colour gradient, ``size`` = ``(width, height)``: content that compresses well."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]  # (1, W)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]  # (H, 1)
    blue = np.broadcast_to(x, (height, width))
    green = np.broadcast_to(y, (height, width))
    red = np.broadcast_to((x + y) / 2, (height, width))
    return np.stack([blue, green, red], axis=-1).astype(np.uint8)  # (H, W, 3) BGR


def clip_frame(image: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
    """Frame ``index`` of a clip: ``image`` slid right a few pixels per frame, plus slight noise."""
    moved = np.roll(image, MOTION_PX_PER_FRAME * index, axis=1)
    noise = rng.normal(0.0, NOISE_SIGMA, size=image.shape)
    return np.clip(moved.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def frame_times(frames: int, fps: float, vfr: bool) -> tuple[list[int], list[int], Fraction]:
    """Presentation times and durations of each frame, and their time base.

    Constant rate: frame ``i`` at ``i`` in time base ``1/fps``. Variable rate: durations cycle
    through :data:`VFR_PATTERN` frame periods in :data:`VFR_TIME_BASE`.
    """
    if not vfr:
        time_base = 1 / Fraction(fps).limit_denominator(1001)
        return list(range(frames)), [1] * frames, time_base
    period = Fraction(1) / Fraction(fps).limit_denominator(1001) / VFR_TIME_BASE  # ticks per frame
    durations = [round(VFR_PATTERN[i % len(VFR_PATTERN)] * period) for i in range(frames)]
    pts = [sum(durations[:i]) for i in range(frames)]
    return pts, durations, VFR_TIME_BASE


def sine_wave(start: int, count: int, channels: int = 2) -> np.ndarray:
    """Samples ``start`` .. ``start + count`` of the clip tone, ``(channels, count)`` float32."""
    t = (start + np.arange(count, dtype=np.float64)) / AUDIO_RATE
    tone = (AUDIO_AMPLITUDE * np.sin(2 * np.pi * AUDIO_TONE_HZ * t)).astype(np.float32)
    return np.repeat(tone[None, :], channels, axis=0)


def _audio_frame(codec: str, start: int, count: int) -> av.AudioFrame:
    samples = sine_wave(start, count)  # (2, count) float32
    if codec == "pcm_s16le":
        interleaved = (samples.T * np.iinfo(np.int16).max).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
    else:
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    frame.pts = start
    frame.time_base = Fraction(1, AUDIO_RATE)
    return frame


def _top_level_box(data: bytes, kind: bytes) -> int:
    """Offset of the type field of the first top-level ISO-BMFF box ``kind``, or -1."""
    offset = 0
    while offset + 8 <= len(data):
        size, box = struct.unpack(">I4s", data[offset : offset + 8])
        if box == kind:
            return offset + 4
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        if size < 8:
            return -1
        offset += size
    return -1


def _set_rotation(path: Path, degrees: int) -> None:
    """Write a display rotation into the (first) video track header of an .mp4/.mov file.

    PyAV cannot attach display-matrix side data to an output stream, so this patches the
    'tkhd' matrix the way phones store portrait video. ``degrees`` is counter-clockwise, as
    FFmpeg reports it (``VideoFrame.rotation``); a multiple of 90.
    """
    data = bytearray(path.read_bytes())
    moov = _top_level_box(data, b"moov")
    pos = data.find(b"tkhd", moov)  # the first track's header: the video stream is added first
    if moov < 0 or pos < 0 or data[pos + 4] != 0:
        raise ValueError(f"{path}: no version-0 tkhd box to patch")
    theta = np.deg2rad(-degrees)  # the file matrix maps display to stored: inverse rotation
    cos, sin = round(np.cos(theta)), round(np.sin(theta))
    matrix = (cos, sin, 0, -sin, cos, 0, 0, 0, 1)
    scales = (_FIXED_16_16, _FIXED_16_16, _FIXED_2_30) * 3
    packed = struct.pack(">9i", *(value * scale for value, scale in zip(matrix, scales)))
    start = pos + _TKHD_MATRIX_OFFSET
    data[start : start + len(packed)] = packed
    path.write_bytes(bytes(data))


def make_clip(
    path: Union[str, Path],
    *,
    frames: int = 12,
    fps: float = 25.0,
    size: tuple[int, int] = (160, 120),
    audio: Optional[AudioCodec] = "aac",
    image: Optional[np.ndarray] = None,
    vfr: bool = False,
    rotation: int = 0,
    audio_offset_s: float = 0.0,
    start_s: float = 0.0,
    bt709: bool = False,
    seed: int = 0,
    still: bool = False,
) -> Path:
    """Write a short clip and return its path.

    Args:
        path: output file; the container follows its extension (.mp4, .m4v, .mov, .mkv: H.264;
            .avi: MPEG-4 part 2; .webm: VP9).
        frames: number of video frames.
        fps: nominal frame rate (the exact rate for constant-rate clips).
        size: ``(width, height)``; odd sizes are allowed (H.264 then uses yuv444p).
        audio: codec of a stereo sine-wave track lasting as long as the video, or None
            (.webm takes only opus; .mp4 takes no pcm_s16le).
        image: BGR uint8 frame content (resized to ``size``); a colour gradient when None. Each
            frame slides it by a few pixels and adds slight noise, so frames differ.
        vfr: variable frame timing (durations cycle through 1, 2, 1, 3 frame periods).
        rotation: display rotation in degrees counter-clockwise (.mp4/.mov only).
        audio_offset_s: the audio starts this much after the video (and still ends with it).
        start_s: every timestamp starts this late (as in cut or broadcast recordings).
        bt709: encode with the BT.709 YUV matrix and tag it (HD cameras do); else untagged
            BT.601, FFmpeg's default.
        seed: noise seed.
        still: every frame is ``image`` as is (no motion, no noise), H.264 lossless: the frames decode
            identical (a test's detections of one serve them all).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    codec = _VIDEO_CODECS[suffix]
    width, height = size
    base = gradient_image(size) if image is None else cv2.resize(image, (width, height))
    pts, durations, time_base = frame_times(frames, fps, vfr)
    first_pts = round(start_s / time_base)
    start_samples = round(start_s * AUDIO_RATE)
    rng = np.random.default_rng(seed)

    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height = width, height
        odd = width % 2 or height % 2
        video.pix_fmt = "yuv444p" if (odd and codec == "libx264") else "yuv420p"
        video.codec_context.time_base = time_base
        video.codec_context.options = {"qp": "0", "preset": "veryfast"} if still and codec == "libx264" \
            else dict(_VIDEO_OPTIONS[codec])
        if codec == "mpeg4":
            video.codec_context.qscale = MPEG4_QSCALE
        if bt709:
            video.codec_context.colorspace = AVCOL_SPC_BT709
            video.codec_context.color_range = AVCOL_RANGE_MPEG
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream(audio, rate=AUDIO_RATE, layout="stereo")

        end_s = float((pts[-1] + durations[-1]) * time_base) if frames else 0.0
        total_samples = round(end_s * AUDIO_RATE)
        written_samples = round(audio_offset_s * AUDIO_RATE)  # the track starts here
        pending: dict[int, int] = {}  # pts -> duration of frames inside the encoder

        def mux_video(packets: list[av.Packet]) -> None:
            for packet in packets:
                # Encoders leave packet durations empty; the muxer needs the last frame's.
                packet.duration = pending.pop(packet.pts, 0)
                container.mux(packet)

        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(base if still else clip_frame(base, index, rng), format="bgr24")
            if bt709:
                frame = frame.reformat(
                    format=video.pix_fmt,
                    dst_colorspace=Colorspace.ITU709,
                    dst_color_range=ColorRange.MPEG,
                )
            frame.pts, frame.time_base = first_pts + pts[index], time_base
            pending[frame.pts] = durations[index]
            mux_video(video.encode(frame))
            # Keep audio interleaved with video: write samples up to this frame's end time.
            frame_end = round(float((pts[index] + durations[index]) * time_base) * AUDIO_RATE)
            while audio_stream is not None and written_samples < min(frame_end, total_samples):
                count = min(AUDIO_CHUNK, total_samples - written_samples)
                chunk = _audio_frame(audio, written_samples, count)
                chunk.pts += start_samples
                container.mux(audio_stream.encode(chunk))
                written_samples += count
        mux_video(video.encode(None))
        if audio_stream is not None:
            container.mux(audio_stream.encode(None))

    if rotation:
        if suffix not in (".mp4", ".mov", ".m4v"):
            raise ValueError("rotation is only supported for .mp4/.mov/.m4v clips")
        _set_rotation(path, rotation)
    return path


def ctrl_c_acts() -> None:
    """``Popen(preexec_fn=...)`` for children a test interrupts: they act on SIGINT even when the test run
    itself was started with SIGINT ignored (a background job), which a child would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
