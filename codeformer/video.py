"""Streaming video decode / encode with PyAV (FFmpeg inside the wheel), audio kept.

:func:`transform_video` runs every frame of a video through a frame-processing callable and
writes an H.264 ``.mp4`` that plays like the input: same frames, frame timing (variable frame
rate included), duration and audio tracks. Nothing holds all frames and no frame touches the
disk as an image; memory is bounded by the queue sizes, not by the video's length.

Design:

- **Pass 1** (video) runs three stages that overlap through small bounded queues:
  a decoder thread (demux, decode, convert to BGR, rotate upright), the calling thread
  (batches of ``batch_frames`` frames through ``process_batch``), and an encoder thread
  (pad to even size, convert to YUV 4:2:0, H.264 encode, mux). PyAV releases the GIL in codec
  and scaling work and torch releases it in its ops, so the stages run in parallel. A failure in
  any stage (or KeyboardInterrupt in the caller) sets a shared stop flag; every blocking queue
  operation polls it, so all threads end within a fraction of a second and the first error is
  raised in the caller.
- **Pass 2** (only when the input has audio) remuxes the encoded video with the input's audio
  tracks into the final file, reading both files packet by packet in timestamp order. Audio the
  MP4 container accepts (AAC, MP3, AC-3, E-AC-3, ALAC) is copied bit for bit, anything else
  (PCM, Opus, Vorbis, FLAC, ...) is re-encoded to AAC. Two passes keep each step simple and
  memory-safe: the muxer never has to buffer audio while the (slow) video side catches up.
  The cost is one extra sequential copy of the compressed video, small next to encoding it.
- Frames keep their presentation times (input ``pts`` and time base carried through), so the
  frame count, rate, duration and any variable frame timing are kept and the audio stays in
  sync. An ``fps`` override re-times frames at a constant rate instead (audio kept as is).
- Output is written to hidden temporary files next to the destination and renamed onto it with
  :func:`os.replace` at the end; any failure removes the temporaries and leaves no file under
  the final name.
- Colours: frames are converted with the input's YUV matrix (BT.601 when it is untagged, as
  FFmpeg assumes) and the output is encoded with, and tagged as, the same matrix in limited
  range, so a player shows the colours the processing saw.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Union

import av
import numpy as np
from av.stream import Disposition
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter
from tqdm import tqdm

from codeformer.errors import CodeFormerError

__all__ = [
    "VIDEO_EXTENSIONS",
    "AudioTrack",
    "ProcessBatch",
    "VideoInfo",
    "VideoStats",
    "h264_encoder",
    "is_video_path",
    "probe_video",
    "transform_video",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
# Gets consecutive BGR uint8 (H, W, 3) frames, returns as many frames of one (any) size.
ProcessBatch = Callable[[list[np.ndarray]], list[np.ndarray]]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")  # matched case-insensitively
# Output containers by destination suffix: all ISO-BMFF, so one set of copyable audio codecs.
_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}

# H.264 encoders in order of preference; PyPI's PyAV wheels ship libx264.
H264_ENCODERS = ("libx264", "libopenh264")
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow", "placebo",
)  # fmt: skip
CRF_MIN, CRF_MAX = 0, 51  # x264's constant-rate-factor range for 8-bit video
X264_DEFAULT_CRF = 23  # x264's own default, the reference point of the bit-rate rule below
# libopenh264 has no CRF: bits per pixel x264 spends at CRF 23 on typical footage, doubled for
# every 6 CRF steps down (x264's own rule of thumb), gives a comparable target bit rate.
OPENH264_BITS_PER_PIXEL_AT_CRF23 = 0.1
CRF_STEPS_PER_DOUBLING = 6
OUTPUT_PIX_FMT = "yuv420p"  # the H.264 format every player decodes

# Audio codecs an MP4 file carries that players handle; others are re-encoded to AAC.
MP4_COPY_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "alac"})
AAC_BITRATE_PER_CHANNEL = 96_000  # 192 kb/s for stereo: transparent for FFmpeg's AAC encoder
# Channel layouts FFmpeg's native AAC encoder accepts, and the one used for a channel count.
AAC_LAYOUTS = frozenset({
    "mono", "stereo", "2.1", "3.0", "4.0", "quad", "5.0", "5.0(side)", "5.1", "5.1(side)",
    "6.1", "7.1", "7.1(wide)",
})  # fmt: skip
AAC_DEFAULT_LAYOUTS = {
    1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1",
}  # fmt: skip

# AVColorSpace values (libavutil/pixfmt.h) mapped to the swscale matrix that converts them.
_AVCOL_SPC_TO_SWS = {
    1: Colorspace.ITU709,  # BT709
    4: Colorspace.FCC,  # FCC
    5: Colorspace.ITU601,  # BT470BG
    6: Colorspace.SMPTE170M,  # SMPTE170M (BT.601 525-line)
    7: Colorspace.SMPTE240M,  # SMPTE240M
    9: Colorspace.BT2020,  # BT2020_NCL
}
_AVCOL_SPC_SMPTE170M = 6  # tag for untagged inputs: FFmpeg decodes those with BT.601
_AVCOL_SPC_BT2020_NCL = 9
_AVCOL_SPC_BT2020_CL = 10  # swscale has no constant-luminance matrix; converted as NCL
_AVCOL_RANGE_MPEG = 1  # limited ("TV") range, what H.264 in yuv420p normally carries

FALLBACK_FPS = 25  # PAL rate; used only when a stream states no frame rate at all
_POLL_S = 0.1  # how often a blocked queue operation checks whether another stage failed
_PROBE_MAX_PACKETS = 500  # packets read while looking for a first decodable frame


def is_video_path(path: PathLike) -> bool:
    """Whether ``path`` has a video file extension (:data:`VIDEO_EXTENSIONS`, any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class AudioTrack:
    """One audio stream of a video file."""

    index: int  # stream index in the container
    codec: str  # FFmpeg codec name: "aac", "mp3", "pcm_s16le", ...
    sample_rate: int
    channels: int
    layout: str  # "stereo", "5.1", ...
    language: Optional[str]

    def describe(self) -> str:
        """One-line description, e.g. ``"aac 48000 Hz stereo (eng)"``."""
        language = f" ({self.language})" if self.language else ""
        return f"{self.codec} {self.sample_rate} Hz {self.layout}{language}"


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file.

    ``width`` x ``height`` is the size of the frames :func:`transform_video` hands to
    ``process_batch``: upright, i.e. after applying the display ``rotation`` phones store.
    """

    path: Path
    width: int
    height: int
    fps: Fraction  # average frame rate
    frame_count: Optional[int]  # from the container header, else estimated; None if unknown
    duration_s: Optional[float]  # of the video stream
    codec: str  # video codec name
    audio_streams: tuple[AudioTrack, ...]
    rotation: int = 0  # display rotation, degrees counter-clockwise (multiple of 90)

    @property
    def has_audio(self) -> bool:
        return bool(self.audio_streams)


@dataclass(frozen=True)
class VideoStats:
    """Result of :func:`transform_video`."""

    output: Path
    frames_in: int  # frames decoded
    frames_out: int  # frames encoded
    seconds: float  # wall time, both passes
    fps: float  # frames_out / seconds
    width: int  # output frame size (even)
    height: int
    audio: tuple[str, ...]  # per input audio track: "copy" or "aac" (re-encoded)


@dataclass(frozen=True)
class _Source:
    """Decoding facts about the input beyond :class:`VideoInfo`."""

    info: VideoInfo
    stream_index: int
    time_base: Fraction  # of the video stream
    colorspace: int  # AVColorSpace the output is encoded with and tagged as
    origin_s: float  # common start time removed from all streams so the output starts at 0


@dataclass(frozen=True)
class _Timing:
    """How decoded frames are timed in the output: in ``time_base`` units."""

    time_base: Fraction
    rate: Fraction  # nominal frame rate written to the stream
    default_duration: int  # for frames that carry no duration
    origin: int  # subtracted from input pts (input time base)
    fixed_rate: bool  # re-time at a constant rate (an ``fps`` override)


@dataclass(frozen=True)
class _Frame:
    image: np.ndarray  # (H, W, 3) BGR uint8
    pts: int  # output time base
    duration: int


@dataclass(frozen=True)
class _EncoderSettings:
    codec: str
    options: dict[str, str]
    bit_rate: Optional[int]


class _Stopped(Exception):
    """Raised inside a stage when another stage failed and asked everyone to stop."""


_END = object()  # queue item: no more frames


# ---------------------------------------------------------------------------------------------
# Probing


def _cannot_decode(path: Path, reason: str) -> CodeFormerError:
    return CodeFormerError(
        f"{path.name}: cannot decode video: {reason} (check that the file is a complete video)"
    )


def _ffmpeg_reason(exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return reason.rstrip(".")


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise _cannot_decode(path, _ffmpeg_reason(exc)) from exc


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:  # cover art is not video
            return stream
    raise _cannot_decode(path, "the file has no video stream")


def _first_frame(
    container: av.container.InputContainer, stream: av.VideoStream, path: Path
) -> av.VideoFrame:
    """The first decodable frame, skipping corrupt packets as FFmpeg does."""
    error = "no frame could be decoded"
    for count, packet in enumerate(container.demux(stream)):
        if count >= _PROBE_MAX_PACKETS:
            break
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            error = _ffmpeg_reason(exc)
            continue
        if frames:
            return frames[0]
    raise _cannot_decode(path, error)


def _seconds(value: Optional[int], time_base: Optional[Fraction]) -> Optional[float]:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _audio_track(stream: av.AudioStream) -> AudioTrack:
    context = stream.codec_context
    return AudioTrack(
        index=stream.index,
        codec=context.codec.canonical_name,
        sample_rate=int(context.sample_rate or 0),
        channels=int(context.channels or 0),
        layout=context.layout.name if context.layout is not None else "unknown",
        language=stream.language,
    )


def _frame_rate(stream: av.VideoStream) -> Fraction:
    """The stream's average frame rate, or its best guess; 0 when FFmpeg cannot tell."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return Fraction(0)


def _inspect(path: PathLike) -> _Source:
    path = Path(path)
    if not path.is_file():
        raise _cannot_decode(path, "no such file")
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        frame = _first_frame(container, stream, path)
        time_base = Fraction(stream.time_base)
        rate = _frame_rate(stream)
        duration_s = _seconds(stream.duration, time_base)
        if duration_s is None and container.duration is not None:
            # Matroska/WebM store no stream durations; their container duration runs to the
            # last timestamp, so a late start is part of it.
            start = max(container.start_time or 0, 0)
            duration_s = (container.duration - start) / av.time_base
        frame_count = stream.frames or None
        if frame_count is None and duration_s and rate:
            frame_count = round(duration_s * rate)  # an estimate: exact for constant rate
        rotation = int(frame.rotation or 0)
        width, height = frame.width, frame.height
        if rotation % 180:
            width, height = height, width
        audio = tuple(_audio_track(s) for s in container.streams.audio)
        starts = [
            _seconds(s.start_time, s.time_base)
            for s in (stream, *container.streams.audio)
            if s.start_time is not None
        ]
        colorspace = frame.colorspace if frame.colorspace in _AVCOL_SPC_TO_SWS else None
        if frame.colorspace == _AVCOL_SPC_BT2020_CL:
            colorspace = _AVCOL_SPC_BT2020_NCL
        info = VideoInfo(
            path=path,
            width=width,
            height=height,
            fps=rate,
            frame_count=frame_count,
            duration_s=duration_s,
            codec=stream.codec_context.codec.canonical_name,
            audio_streams=audio,
            rotation=rotation,
        )
        return _Source(
            info=info,
            stream_index=stream.index,
            time_base=time_base,
            colorspace=_AVCOL_SPC_SMPTE170M if colorspace is None else colorspace,
            origin_s=max(0.0, min(starts)) if starts else 0.0,
        )


def probe_video(path: PathLike) -> VideoInfo:
    """Read a video file's size, frame rate, length and audio tracks (decodes one frame).

    Raises:
        CodeFormerError: the file is missing, corrupt, unsupported, or has no video stream.
    """
    return _inspect(path).info


# ---------------------------------------------------------------------------------------------
# Encoder choice and options


def h264_encoder() -> str:
    """The best H.264 encoder this PyAV build has (:data:`H264_ENCODERS` order)."""
    for name in H264_ENCODERS:
        try:
            if av.Codec(name, "w").is_encoder:
                return name
        except (av.codec.codec.UnknownCodecError, ValueError):
            continue
    raise CodeFormerError(
        "this PyAV build has no H.264 encoder (libx264 or libopenh264); "
        "install PyAV from PyPI: pip install --force-reinstall av"
    )


def _encoder_settings(
    encoder: str, crf: int, preset: str, width: int, height: int, rate: Fraction
) -> _EncoderSettings:
    if encoder == "libx264":
        return _EncoderSettings(encoder, {"crf": str(crf), "preset": preset}, None)
    # libopenh264: bit-rate control only, no speed presets.
    doublings = (X264_DEFAULT_CRF - crf) / CRF_STEPS_PER_DOUBLING
    bits_per_pixel = OPENH264_BITS_PER_PIXEL_AT_CRF23 * 2**doublings
    bit_rate = round(width * height * float(rate or FALLBACK_FPS) * bits_per_pixel)
    return _EncoderSettings(encoder, {"rc_mode": "bitrate"}, bit_rate)


def _validate_options(
    batch_frames: int, fps: Optional[float], crf: int, preset: str, queue_size: int
) -> None:
    if not isinstance(batch_frames, int) or batch_frames < 1:
        raise CodeFormerError(f"batch_frames must be a positive integer, got {batch_frames!r}")
    if not isinstance(queue_size, int) or queue_size < 1:
        raise CodeFormerError(f"queue_size must be a positive integer, got {queue_size!r}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise CodeFormerError(f"the output frame rate must be a positive number, got {fps!r}")
    if not isinstance(crf, int) or not CRF_MIN <= crf <= CRF_MAX:
        raise CodeFormerError(f"crf must be an integer from {CRF_MIN} to {CRF_MAX}, got {crf!r}")
    if preset not in X264_PRESETS:
        raise CodeFormerError(f"unknown preset {preset!r}; use one of: {', '.join(X264_PRESETS)}")


# ---------------------------------------------------------------------------------------------
# Frame conversion and timing (pure functions)


def _to_bgr(
    frame: av.VideoFrame, matrix: Colorspace, quarter_turns: int, scaler: VideoReformatter
) -> np.ndarray:
    """Decoded frame -> upright (H, W, 3) BGR uint8, contiguous.

    ``scaler`` is reused from frame to frame: cheaper than a new conversion context each time.
    """
    bgr = scaler.reformat(frame, format="bgr24", src_colorspace=matrix)
    image = bgr.to_ndarray()  # (H, W, 3)
    if quarter_turns:
        image = np.rot90(image, quarter_turns)  # counter-clockwise, as FFmpeg's rotation angle
    return np.ascontiguousarray(image)


def _even_padding(height: int, width: int) -> tuple[int, int]:
    """Rows and columns to add so that both sides are even (yuv420p subsamples chroma 2x2)."""
    return height % 2, width % 2


def _to_yuv_frame(
    image: np.ndarray, padding: tuple[int, int], matrix: Colorspace, scaler: VideoReformatter
) -> av.VideoFrame:
    """(H, W, 3) BGR uint8 -> yuv420p frame in limited range, edge-replicated to even size."""
    pad_rows, pad_cols = padding
    if pad_rows or pad_cols:
        image = np.pad(image, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
    # Wraps the array without copying it; the conversion below reads it right away.
    bgr = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(image), format="bgr24")
    return scaler.reformat(
        bgr, format=OUTPUT_PIX_FMT, dst_colorspace=matrix, dst_color_range=ColorRange.MPEG
    )


def _next_pts(pts: Optional[int], previous: Optional[int], previous_duration: int) -> int:
    """A presentation time strictly after ``previous``: the frame's own when it is, else the
    previous one plus its duration (frames without or with repeated timestamps)."""
    if previous is None:
        return 0 if pts is None else pts
    if pts is None or pts <= previous:
        return previous + max(previous_duration, 1)
    return pts


def _make_timing(source: _Source, fps: Optional[float]) -> _Timing:
    if fps is not None:
        # Float rates like 29.97 become exact fractions (2997/100); NTSC 30000/1001 stays exact.
        rate = Fraction(fps).limit_denominator(1001 * 1000)
        return _Timing(1 / rate, rate, 1, 0, fixed_rate=True)
    rate = source.info.fps or Fraction(FALLBACK_FPS)  # only for frames without durations
    time_base = source.time_base
    default_duration = max(1, round(1 / (rate * time_base)))
    origin = round(source.origin_s / time_base)
    return _Timing(time_base, rate, default_duration, origin, fixed_rate=False)


# ---------------------------------------------------------------------------------------------
# Queues that give up when another stage failed


def _put(channel: queue.Queue, item: object, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            channel.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _get(channel: queue.Queue, stop: threading.Event) -> object:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return channel.get(timeout=_POLL_S)
        except queue.Empty:
            continue


def _run_stage(
    target: Callable[..., None], failures: list[BaseException], stop: threading.Event, *args
) -> None:
    """Thread body: run a stage; on failure record the error and stop the other stages."""
    try:
        target(*args, stop)
    except _Stopped:
        pass
    except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
        failures.append(exc)
        stop.set()


# ---------------------------------------------------------------------------------------------
# Pass 1 stages


@dataclass
class _Counter:
    """What a worker thread did; read by the caller after joining it."""

    frames: int = 0
    width: int = 0  # encoder: output frame size
    height: int = 0


@dataclass(frozen=True)
class _EncodeJob:
    """Where and how the encoder thread writes the processed frames."""

    path: Path
    label: str  # input file name, for log lines
    container_format: str
    container_options: dict[str, str]
    make_settings: Callable[[int, int], _EncoderSettings]  # (width, height) -> settings
    timing: _Timing
    colorspace: int  # AVColorSpace to convert with and tag


def _decode_stage(
    source: _Source, timing: _Timing, out: queue.Queue, counter: _Counter, stop: threading.Event
) -> None:
    path = source.info.path
    matrix = _AVCOL_SPC_TO_SWS[source.colorspace]
    quarter_turns = (source.info.rotation // 90) % 4
    scaler = VideoReformatter()
    corrupt = 0
    previous: Optional[int] = None
    previous_duration = timing.default_duration
    with _open_input(path) as container:
        stream = container.streams[source.stream_index]
        stream.thread_type = "AUTO"  # frame + slice threads: decoding keeps up with encoding
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    corrupt += 1  # skip a damaged packet and go on, as FFmpeg does
                    continue
                for frame in frames:
                    if timing.fixed_rate:
                        pts, duration = counter.frames, 1
                    else:
                        raw = None if frame.pts is None else frame.pts - timing.origin
                        pts = _next_pts(raw, previous, previous_duration)
                        duration = frame.duration or timing.default_duration
                    previous, previous_duration = pts, duration
                    image = _to_bgr(frame, matrix, quarter_turns, scaler)
                    _put(out, _Frame(image, pts, duration), stop)
                    counter.frames += 1
        except av.FFmpegError as exc:
            raise _cannot_decode(path, _ffmpeg_reason(exc)) from exc
    if corrupt:
        logger.warning("%s: skipped %d damaged video packets", path.name, corrupt)
    if counter.frames == 0:
        raise _cannot_decode(path, "no frame could be decoded")
    _put(out, _END, stop)


def _add_video_stream(
    container: av.container.OutputContainer,
    settings: _EncoderSettings,
    timing: _Timing,
    width: int,
    height: int,
    colorspace: int,
) -> av.VideoStream:
    stream = container.add_stream(settings.codec, rate=timing.rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = OUTPUT_PIX_FMT
    context = stream.codec_context
    context.time_base = timing.time_base
    context.options = dict(settings.options)
    if settings.bit_rate:
        context.bit_rate = settings.bit_rate
    # Tag the matrix and range the frames are converted with, so players undo exactly that.
    context.colorspace = colorspace
    context.color_range = _AVCOL_RANGE_MPEG
    return stream


def _encode_stage(
    job: _EncodeJob, frames_in: queue.Queue, counter: _Counter, stop: threading.Event
) -> None:
    matrix = _AVCOL_SPC_TO_SWS[job.colorspace]
    scaler = VideoReformatter()
    with av.open(
        str(job.path), "w", format=job.container_format, container_options=job.container_options
    ) as out:
        stream: Optional[av.VideoStream] = None
        padding = (0, 0)
        durations: dict[int, int] = {}  # pts -> duration of frames inside the encoder

        def mux(packets: Sequence[av.Packet]) -> None:
            for packet in packets:
                # libx264 leaves packet durations empty; the muxer needs the last one.
                packet.duration = durations.pop(packet.pts, 0)
                out.mux(packet)

        while True:
            item = _get(frames_in, stop)
            if item is _END:
                break
            assert isinstance(item, _Frame)
            if stream is None:
                height, width = item.image.shape[:2]
                padding = _even_padding(height, width)
                if any(padding):
                    logger.info(
                        "%s: frames are %dx%d; padding to %dx%d (H.264 yuv420p needs even sizes)",
                        job.label, width, height, width + padding[1], height + padding[0],
                    )  # fmt: skip
                counter.width, counter.height = width + padding[1], height + padding[0]
                settings = job.make_settings(counter.width, counter.height)
                stream = _add_video_stream(
                    out, settings, job.timing, counter.width, counter.height, job.colorspace
                )
            frame = _to_yuv_frame(item.image, padding, matrix, scaler)
            frame.pts, frame.time_base = item.pts, job.timing.time_base
            durations[item.pts] = item.duration
            mux(stream.encode(frame))
            counter.frames += 1
        if stream is not None:
            mux(stream.encode(None))


def _process_stage(
    frames_in: queue.Queue,
    frames_out: queue.Queue,
    process_batch: ProcessBatch,
    batch_frames: int,
    bar: tqdm,
    stop: threading.Event,
) -> None:
    """Runs in the calling thread: batches of decoded frames through ``process_batch``."""
    shape: Optional[tuple[int, ...]] = None
    finished = False
    while not finished:
        batch: list[_Frame] = []
        while len(batch) < batch_frames:
            item = _get(frames_in, stop)
            if item is _END:
                finished = True
                break
            batch.append(item)  # type: ignore[arg-type]
        if not batch:
            break
        outputs = process_batch([frame.image for frame in batch])
        shape = _check_outputs(outputs, len(batch), shape)
        for frame, image in zip(batch, outputs):
            _put(frames_out, _Frame(image, frame.pts, frame.duration), stop)
        bar.update(len(batch))
    _put(frames_out, _END, stop)


def _check_outputs(
    outputs: object, expected: int, shape: Optional[tuple[int, ...]]
) -> tuple[int, ...]:
    """Check ``process_batch``'s result: ``expected`` BGR uint8 frames, all of one size."""
    if not isinstance(outputs, (list, tuple)) or len(outputs) != expected:
        count = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
        raise ValueError(f"process_batch must return a list of {expected} frames, got {count}")
    for image in outputs:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError("process_batch must return BGR uint8 (H, W, 3) arrays")
        if image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"process_batch returned a frame of shape {image.shape}")
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise ValueError(
                f"process_batch returned frames of different sizes: {shape} and {image.shape}"
            )
    assert shape is not None
    return shape


def _join(threads: Sequence[threading.Thread]) -> None:
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=_POLL_S)  # a short timeout keeps KeyboardInterrupt deliverable


def _encode_video(
    source: _Source,
    job: _EncodeJob,
    process_batch: ProcessBatch,
    *,
    batch_frames: int,
    queue_size: int,
    progress: bool,
) -> tuple[_Counter, _Counter]:
    """Pass 1: decode -> process -> encode, overlapped. Returns what decoder and encoder did."""
    stop = threading.Event()
    failures: list[BaseException] = []
    decoded: queue.Queue = queue.Queue(maxsize=queue_size)
    processed: queue.Queue = queue.Queue(maxsize=queue_size)
    decoded_count, encoded_count = _Counter(), _Counter()
    decoder = threading.Thread(
        target=_run_stage,
        args=(_decode_stage, failures, stop, source, job.timing, decoded, decoded_count),
        name="codeformer-video-decode",
        daemon=True,
    )
    encoder = threading.Thread(
        target=_run_stage,
        args=(_encode_stage, failures, stop, job, processed, encoded_count),
        name="codeformer-video-encode",
        daemon=True,
    )
    bar = tqdm(
        total=source.info.frame_count,
        unit="frame",
        desc=source.info.path.name,
        disable=not progress,
        dynamic_ncols=True,
    )
    decoder.start()
    encoder.start()
    try:
        try:
            _process_stage(decoded, processed, process_batch, batch_frames, bar, stop)
        except _Stopped:
            pass  # a worker failed: its error is raised below
        _join([encoder, decoder])
    except BaseException:
        stop.set()
        _join([decoder, encoder])
        raise
    finally:
        bar.close()
    if failures:
        raise failures[0]
    return decoded_count, encoded_count


# ---------------------------------------------------------------------------------------------
# Pass 2: video + audio


@dataclass
class _AudioOut:
    source: av.AudioStream
    target: av.AudioStream
    copy: bool
    shift: int  # subtracted from pts/dts, in the source stream's time base


def _aac_rate(rate: int) -> int:
    """The nearest sample rate at or above ``rate`` that the AAC encoder takes."""
    supported = sorted(av.Codec("aac", "w").audio_rates or (48_000,))
    return next((r for r in supported if r >= rate), supported[-1])


def _add_audio_output(
    out: av.container.OutputContainer, source: av.AudioStream, origin_s: float
) -> _AudioOut:
    shift = round(origin_s / source.time_base) if source.time_base else 0
    if source.codec_context.codec.canonical_name in MP4_COPY_AUDIO_CODECS:
        return _AudioOut(source, out.add_stream_from_template(source), True, shift)
    context = source.codec_context
    channels = int(context.channels or 0)
    layout = context.layout.name if context.layout is not None else ""
    if layout not in AAC_LAYOUTS:
        # Unnamed ("2 channels") or unsupported layouts: the usual layout for that many
        # channels; beyond 7.1, PyAV's resampler downmixes to stereo.
        layout = AAC_DEFAULT_LAYOUTS.get(channels, "stereo")
    target = out.add_stream("aac", rate=_aac_rate(int(context.sample_rate)), layout=layout)
    target.bit_rate = AAC_BITRATE_PER_CHANNEL * target.codec_context.channels
    if source.language:
        target.language = source.language
    return _AudioOut(source, target, False, shift)


def _packet_time(packet: av.Packet) -> Optional[float]:
    stamp = packet.dts if packet.dts is not None else packet.pts
    if stamp is None or packet.time_base is None:
        return None
    return float(stamp * packet.time_base)


def _timed_packets(
    container: av.container.InputContainer, streams: Sequence[av.stream.Stream], source: int
) -> Iterator[tuple[float, int, int, av.Packet]]:
    """Demuxed packets as (decode time in seconds, source, order in the file, packet).

    Packets without a timestamp (and end-of-stream markers) take the previous packet's time,
    so each source stays sorted for :func:`heapq.merge`; source and order break ties, so
    packets themselves are never compared.
    """
    last = -math.inf
    for order, packet in enumerate(container.demux(list(streams))):
        stamp = _packet_time(packet)
        last = last if stamp is None else stamp
        yield last, source, order, packet


_VIDEO_SOURCE, _AUDIO_SOURCE = 0, 1


def _mux_audio(
    video_path: Path, source: _Source, dst: Path, container_format: str, options: dict[str, str]
) -> tuple[str, ...]:
    """Pass 2: copy the encoded video and the input's audio tracks into ``dst``, interleaved.

    Returns "copy" or "aac" (re-encoded) per audio track.
    """
    path = source.info.path
    with av.open(str(video_path), "r") as video_in, _open_input(path) as audio_in, av.open(
        str(dst), "w", format=container_format, container_options=options
    ) as out:
        video_src = video_in.streams.video[0]
        video_dst = out.add_stream_from_template(video_src)
        tracks = {
            stream.index: _add_audio_output(out, stream, source.origin_s)
            for stream in audio_in.streams.audio
        }
        for track in tracks.values():
            if not track.copy:
                logger.info(
                    "%s: re-encoding %s audio to AAC (MP4 does not carry it)",
                    path.name, track.source.codec_context.codec.canonical_name,
                )  # fmt: skip
        audio_streams = [track.source for track in tracks.values()]
        packets = heapq.merge(
            _timed_packets(video_in, [video_src], _VIDEO_SOURCE),
            _timed_packets(audio_in, audio_streams, _AUDIO_SOURCE),
        )
        try:
            for _, origin, _, packet in packets:
                if origin == _AUDIO_SOURCE:
                    _mux_audio_packet(out, tracks[packet.stream.index], packet)
                elif packet.size:  # empty packets mark the end of the stream
                    packet.stream = video_dst
                    out.mux(packet)
            for track in tracks.values():
                if not track.copy:
                    out.mux(track.target.encode(None))  # flush the AAC encoder
        except av.FFmpegError as exc:
            raise CodeFormerError(
                f"{path.name}: cannot copy or re-encode the audio: {_ffmpeg_reason(exc)}"
            ) from exc
    return tuple("copy" if track.copy else "aac" for track in tracks.values())


def _mux_audio_packet(
    out: av.container.OutputContainer, track: _AudioOut, packet: av.Packet
) -> None:
    if track.copy:
        if not packet.size:
            return  # demuxer's end-of-stream marker
        if track.shift:
            packet.pts = None if packet.pts is None else packet.pts - track.shift
            packet.dts = None if packet.dts is None else packet.dts - track.shift
        packet.stream = track.target
        out.mux(packet)
        return
    try:
        frames = packet.decode()
    except av.error.InvalidDataError:
        return  # a damaged audio packet: drop it, as FFmpeg does
    for frame in frames:
        if track.shift and frame.pts is not None:
            frame.pts -= track.shift
        out.mux(track.target.encode(frame))


# ---------------------------------------------------------------------------------------------
# Public entry point


def _temporary_path(dst: Path, tag: str) -> Path:
    """A unique hidden name next to ``dst`` (same filesystem, so os.replace is atomic).

    Not created here: FFmpeg creates it with the usual permissions (mkstemp's would be 0600).
    """
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return dst.parent / f".{dst.stem}.{token}.{tag}{dst.suffix}"


def transform_video(
    src: PathLike,
    dst: PathLike,
    process_batch: ProcessBatch,
    *,
    batch_frames: int = 4,
    fps: Optional[float] = None,
    crf: int = 18,
    preset: str = "medium",
    progress: bool = True,
    queue_size: int = 8,
) -> VideoStats:
    """Run every frame of ``src`` through ``process_batch`` and write an H.264 video to ``dst``.

    Args:
        src: input video (any container/codec FFmpeg decodes).
        dst: output path (``.mp4``, ``.m4v`` or ``.mov``); its folder is created if needed.
        process_batch: gets up to ``batch_frames`` consecutive upright BGR uint8 (H, W, 3) frames
            and returns as many frames, all of one size (e.g. 2x the input). Its exceptions
            propagate unchanged.
        batch_frames: frames per ``process_batch`` call.
        fps: output frame rate; frames are then re-timed at this constant rate (default: keep
            the input's timing, variable frame rate included).
        crf: H.264 constant rate factor, 0 (lossless) .. 51; 18 is visually transparent.
        preset: x264 speed/size preset (``ultrafast`` .. ``placebo``).
        progress: show a tqdm bar (frames, fps, ETA).
        queue_size: frames buffered between decoding, processing and encoding.

    Returns:
        :class:`VideoStats`: frames in/out, wall time, achieved fps, output path and size.

    Raises:
        CodeFormerError: unreadable input, invalid option, or a failure writing ``dst``.

    Memory is bounded by ``2 * queue_size + 2 * batch_frames`` frames plus the codecs' own
    buffers, independent of the video's length.
    """
    _validate_options(batch_frames, fps, crf, preset, queue_size)
    dst = Path(dst)
    container_format = _OUTPUT_FORMATS.get(dst.suffix.lower())
    if container_format is None:
        raise CodeFormerError(
            f"{dst.name}: unsupported video output; use one of {', '.join(_OUTPUT_FORMATS)}"
        )
    started = time.perf_counter()
    source = _inspect(src)
    encoder = h264_encoder()
    timing = _make_timing(source, fps)
    if fps is not None and source.info.has_audio and source.info.fps:
        if abs(float(source.info.fps) - fps) > 1e-3:
            logger.info(
                "%s: frame rate %.3f -> %.3f changes the video's length; the audio is kept as is",
                source.info.path.name, float(source.info.fps), fps,
            )  # fmt: skip

    def make_settings(width: int, height: int) -> _EncoderSettings:
        return _encoder_settings(encoder, crf, preset, width, height, timing.rate)

    has_audio = source.info.has_audio
    # Moving the index to the front lets players start before the whole file is read.
    final_options = {"movflags": "+faststart"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    temporaries: list[Path] = []
    try:
        video_path = _temporary_path(dst, "video" if has_audio else "part")
        temporaries.append(video_path)
        job = _EncodeJob(
            path=video_path,
            label=source.info.path.name,
            container_format=container_format,
            container_options={} if has_audio else final_options,
            make_settings=make_settings,
            timing=timing,
            colorspace=source.colorspace,
        )
        decoded, encoded = _encode_video(
            source,
            job,
            process_batch,
            batch_frames=batch_frames,
            queue_size=queue_size,
            progress=progress,
        )
        final_path, audio = video_path, ()
        if has_audio:
            final_path = _temporary_path(dst, "part")
            temporaries.append(final_path)
            audio = _mux_audio(video_path, source, final_path, container_format, final_options)
        os.replace(final_path, dst)
    except av.FFmpegError as exc:
        raise CodeFormerError(f"{dst.name}: cannot write video: {_ffmpeg_reason(exc)}") from exc
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return VideoStats(
        output=dst,
        frames_in=decoded.frames,
        frames_out=encoded.frames,
        seconds=seconds,
        fps=encoded.frames / seconds if seconds > 0 else 0.0,
        width=encoded.width,
        height=encoded.height,
        audio=audio,
    )
