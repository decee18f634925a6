"""What a video file holds: streams, size, frame rate, audio tracks, colour matrix (PyAV)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import av
from av.stream import Disposition
from av.video.reformatter import Colorspace

from codeformer.errors import CodeFormerError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")  # matched case-insensitively
# AVColorSpace values (libavutil/pixfmt.h) mapped to the swscale matrix that converts them.
AVCOL_SPC_TO_SWS = {
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
AVCOL_RANGE_MPEG = 1  # limited ("TV") range, what H.264 in yuv420p normally carries
FALLBACK_FPS = 25  # PAL rate; used only when a stream states no frame rate at all
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
class Source:
    """Decoding facts about the input beyond :class:`VideoInfo`."""

    info: VideoInfo
    stream_index: int
    time_base: Fraction  # of the video stream
    colorspace: int  # AVColorSpace the output is encoded with and tagged as
    origin_s: float  # common start time removed from all streams so the output starts at 0


def cannot_decode(path: Path, reason: str) -> CodeFormerError:
    return CodeFormerError(
        f"{path.name}: cannot decode video: {reason} (check that the file is a complete video)"
    )


def ffmpeg_reason(exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return reason.rstrip(".")


def open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise cannot_decode(path, ffmpeg_reason(exc)) from exc


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:  # cover art is not video
            return stream
    raise cannot_decode(path, "the file has no video stream")


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
            error = ffmpeg_reason(exc)
            continue
        if frames:
            return frames[0]
    raise cannot_decode(path, error)


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


def inspect_source(path: PathLike) -> Source:
    path = Path(path)
    if not path.is_file():
        raise cannot_decode(path, "no such file")
    with open_input(path) as container:
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
        colorspace = frame.colorspace if frame.colorspace in AVCOL_SPC_TO_SWS else None
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
        return Source(
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
    return inspect_source(path).info
