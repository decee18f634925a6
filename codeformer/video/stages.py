"""Pass 1: decode, process and encode as three overlapping stages joined by small bounded queues.

A decoder thread (demux, decode, convert to BGR, rotate upright), the calling thread (batches of
frames through ``process_batch``) and an encoder thread (pad to even size, convert to YUV 4:2:0,
H.264 encode, mux) run in parallel: PyAV releases the GIL in codec and scaling work and torch in its
ops. A failure in any stage (or KeyboardInterrupt in the caller) sets a shared stop flag that every
blocking queue operation polls, so all threads end within a fraction of a second and the first
error is raised in the caller.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Protocol, Union, runtime_checkable

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from codeformer.errors import CodeFormerError
from codeformer.progress import Progress
from codeformer.video.probe import (
    AVCOL_RANGE_MPEG,
    AVCOL_SPC_TO_SWS,
    FALLBACK_FPS,
    Source,
    cannot_decode,
    ffmpeg_reason,
    open_input,
)

logger = logging.getLogger(__name__)

# Gets consecutive BGR uint8 (H, W, 3) frames, returns as many frames of one (any) size.
ProcessBatch = Callable[[list[np.ndarray]], list[np.ndarray]]


@runtime_checkable
class FrameProcessor(Protocol):
    """A frame processor that may hold frames back (e.g. to look ahead for temporal smoothing).

    ``process`` gets consecutive BGR uint8 frames and returns the processed frames that are ready,
    oldest first: any number, as long as it never returns more than it was given so far. ``flush``
    returns the rest at the end of the stream. Frames are matched to their timestamps by order.
    """

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]: ...

    def flush(self) -> list[np.ndarray]: ...
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
# swscale's default YUV <-> RGB paths truncate instead of rounding, each losing about half a level:
# decode + encode + the player's decode made an unchanged frame about 2 levels darker. Rounding on
# both of our conversions gives back the input's YUV values (within a level). For YUV -> RGB,
# ACCURATE_RND only takes effect on the full-chroma path (FULL_CHR_H_INT).
_DECODE_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
_ENCODE_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND
_POLL_S = 0.1  # how often a blocked queue operation checks whether another stage failed


@dataclass(frozen=True)
class Timing:
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
class EncoderSettings:
    codec: str
    options: dict[str, str]
    bit_rate: Optional[int]


class _Stopped(Exception):
    """Raised inside a stage when another stage failed and asked everyone to stop."""


_END = object()  # queue item: no more frames


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


def encoder_settings(
    encoder: str, crf: int, preset: str, width: int, height: int, rate: Fraction
) -> EncoderSettings:
    if encoder == "libx264":
        return EncoderSettings(encoder, {"crf": str(crf), "preset": preset}, None)
    # libopenh264: bit-rate control only, no speed presets.
    doublings = (X264_DEFAULT_CRF - crf) / CRF_STEPS_PER_DOUBLING
    bits_per_pixel = OPENH264_BITS_PER_PIXEL_AT_CRF23 * 2**doublings
    bit_rate = round(width * height * float(rate or FALLBACK_FPS) * bits_per_pixel)
    return EncoderSettings(encoder, {"rc_mode": "bitrate"}, bit_rate)


def validate_options(
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


def frame_to_bgr(
    frame: av.VideoFrame, matrix: Colorspace, quarter_turns: int, scaler: VideoReformatter
) -> np.ndarray:
    """Decoded frame -> upright (H, W, 3) BGR uint8, contiguous.

    ``scaler`` is reused from frame to frame: cheaper than a new conversion context each time.
    """
    bgr = scaler.reformat(frame, format="bgr24", src_colorspace=matrix, interpolation=_DECODE_FLAGS)
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
        bgr, format=OUTPUT_PIX_FMT, dst_colorspace=matrix, dst_color_range=ColorRange.MPEG,
        interpolation=_ENCODE_FLAGS,
    )


def next_pts(pts: Optional[int], previous: Optional[int], previous_duration: int) -> int:
    """A presentation time strictly after ``previous``: the frame's own when it is, else the
    previous one plus its duration (frames without or with repeated timestamps)."""
    if previous is None:
        return 0 if pts is None else pts
    if pts is None or pts <= previous:
        return previous + max(previous_duration, 1)
    return pts


def make_timing(source: Source, fps: Optional[float]) -> Timing:
    if fps is not None:
        # Float rates like 29.97 become exact fractions (2997/100); NTSC 30000/1001 stays exact.
        rate = Fraction(fps).limit_denominator(1001 * 1000)
        return Timing(1 / rate, rate, 1, 0, fixed_rate=True)
    rate = source.info.fps or Fraction(FALLBACK_FPS)  # only for frames without durations
    time_base = source.time_base
    default_duration = max(1, round(1 / (rate * time_base)))
    origin = round(source.origin_s / time_base)
    return Timing(time_base, rate, default_duration, origin, fixed_rate=False)


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


@dataclass
class _Counter:
    """What a worker thread did; read by the caller after joining it."""

    frames: int = 0
    width: int = 0  # encoder: output frame size
    height: int = 0


@dataclass(frozen=True)
class EncodeJob:
    """Where and how the encoder thread writes the processed frames."""

    path: Path
    label: str  # input file name, for log lines
    container_format: str
    container_options: dict[str, str]
    make_settings: Callable[[int, int], EncoderSettings]  # (width, height) -> settings
    timing: Timing
    colorspace: int  # AVColorSpace to convert with and tag


def _decode_stage(
    source: Source, timing: Timing, out: queue.Queue, counter: _Counter, stop: threading.Event
) -> None:
    path = source.info.path
    matrix = AVCOL_SPC_TO_SWS[source.colorspace]
    quarter_turns = (source.info.rotation // 90) % 4
    scaler = VideoReformatter()
    corrupt = 0
    previous: Optional[int] = None
    previous_duration = timing.default_duration
    with open_input(path) as container:
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
                        pts = next_pts(raw, previous, previous_duration)
                        duration = frame.duration or timing.default_duration
                    previous, previous_duration = pts, duration
                    image = frame_to_bgr(frame, matrix, quarter_turns, scaler)
                    _put(out, _Frame(image, pts, duration), stop)
                    counter.frames += 1
        except av.FFmpegError as exc:
            raise cannot_decode(path, ffmpeg_reason(exc)) from exc
    if corrupt:
        logger.warning("%s: skipped %d damaged video packets", path.name, corrupt)
    if counter.frames == 0:
        raise cannot_decode(path, "no frame could be decoded")
    _put(out, _END, stop)


def _add_video_stream(
    container: av.container.OutputContainer,
    settings: EncoderSettings,
    timing: Timing,
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
    context.color_range = AVCOL_RANGE_MPEG
    return stream


def _encode_stage(
    job: EncodeJob, frames_in: queue.Queue, counter: _Counter, stop: threading.Event
) -> None:
    matrix = AVCOL_SPC_TO_SWS[job.colorspace]
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
    process_batch: Union[ProcessBatch, FrameProcessor],
    batch_frames: int,
    bar: Progress,
    stop: threading.Event,
) -> None:
    """Runs in the calling thread: batches of decoded frames through ``process_batch``.

    A :class:`FrameProcessor` may hand frames back later than it got them: the timestamps of the
    frames it still holds wait in ``pending`` (bounded by what the processor holds).
    """
    streaming = isinstance(process_batch, FrameProcessor)
    shape: Optional[tuple[int, ...]] = None
    pending: deque[_Frame] = deque()  # decoded frames whose processed image has not come back yet
    finished = False

    def emit(outputs: object, exact: bool) -> None:
        nonlocal shape
        if not streaming or exact:
            shape = _check_outputs(outputs, len(pending), shape)
        else:
            count = len(outputs) if isinstance(outputs, (list, tuple)) else -1
            if not 0 <= count <= len(pending):
                raise ValueError(f"a frame processor returned {count} frames while holding {len(pending)}")
            shape = _check_outputs(outputs, count, shape) if count else shape
        for image in outputs:  # type: ignore[union-attr]
            frame = pending.popleft()
            _put(frames_out, _Frame(image, frame.pts, frame.duration), stop)
        bar.update(len(outputs))  # type: ignore[arg-type]

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
        pending.extend(batch)
        images = [frame.image for frame in batch]
        if streaming:
            emit(process_batch.process(images), exact=False)  # type: ignore[union-attr]
        else:
            emit(process_batch(images), exact=True)  # type: ignore[operator]
    if streaming:
        emit(process_batch.flush(), exact=True)  # type: ignore[union-attr]
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


class FrameEncoder:
    """The encoder stage on its own: frames written here are encoded in a thread into ``job.path``.

    For callers that decode and process frames themselves (a video cut into segments)::

        with FrameEncoder(job) as encoder:
            for image, pts, duration in frames:
                encoder.write(image, pts, duration)
        encoder.frames  # how many were encoded

    Leaving the block normally waits for the last frame to be muxed and raises the encoder's error,
    if any; leaving it with an exception stops the thread and lets the exception through.
    """

    def __init__(self, job: EncodeJob, queue_size: int = 8) -> None:
        self._stop = threading.Event()
        self._failures: list[BaseException] = []
        self._frames: queue.Queue = queue.Queue(maxsize=queue_size)
        self._counter = _Counter()
        self._thread = threading.Thread(
            target=_run_stage, args=(_encode_stage, self._failures, self._stop, job, self._frames, self._counter),
            name="codeformer-video-encode", daemon=True,
        )  # fmt: skip

    @property
    def frames(self) -> int:
        """Frames encoded so far (all of them once the block is left)."""
        return self._counter.frames

    def __enter__(self) -> FrameEncoder:
        self._thread.start()
        return self

    def write(self, image: np.ndarray, pts: int, duration: int) -> None:
        """Queue one (H, W, 3) BGR uint8 frame; times in the job's time base, increasing."""
        try:
            _put(self._frames, _Frame(image, pts, duration), self._stop)
        except _Stopped:
            raise self._failures[0] if self._failures else CodeFormerError("the video encoder stopped") from None

    def __exit__(self, error_type: object, error: object, traceback: object) -> None:
        if error is None:
            with contextlib.suppress(_Stopped):
                _put(self._frames, _END, self._stop)
        else:
            self._stop.set()
        _join([self._thread])
        if error is None and self._failures:
            raise self._failures[0]


def encode_video(
    source: Source,
    job: EncodeJob,
    process_batch: Union[ProcessBatch, FrameProcessor],
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
    # In a log: a line every few seconds with the frames done, not one per frame.
    bar = Progress(total=source.info.frame_count, desc=source.info.path.name, unit="frame", enabled=progress,
                   per_item=False)
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

