"""``transform_video``: every frame of a video through a function, into an H.264 video that plays like it."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import av

from codeformer._atomic import parent_folders, temporary_sibling
from codeformer.errors import CodeFormerError
from codeformer.video.audio import mux_audio
from codeformer.video.probe import ffmpeg_reason, inspect_source
from codeformer.video.stages import (
    EncodeJob,
    EncoderSettings,
    FrameProcessor,
    ProcessBatch,
    encode_video,
    encoder_settings,
    h264_encoder,
    make_timing,
    validate_options,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Output containers by destination suffix: all ISO-BMFF, so one set of copyable audio codecs.
_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}


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


def transform_video(
    src: PathLike,
    dst: PathLike,
    process_batch: Union[ProcessBatch, FrameProcessor],
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
    validate_options(batch_frames, fps, crf, preset, queue_size)
    dst = Path(dst)
    container_format = _OUTPUT_FORMATS.get(dst.suffix.lower())
    if container_format is None:
        raise CodeFormerError(
            f"{dst.name}: unsupported video output; use one of {', '.join(_OUTPUT_FORMATS)}"
        )
    started = time.perf_counter()
    source = inspect_source(src)
    encoder = h264_encoder()
    timing = make_timing(source, fps)
    if fps is not None and source.info.has_audio and source.info.fps:
        if abs(float(source.info.fps) - fps) > 1e-3:
            logger.info(
                "%s: frame rate %.3f -> %.3f changes the video's length; the audio is kept as is",
                source.info.path.name, float(source.info.fps), fps,
            )  # fmt: skip

    def make_settings(width: int, height: int) -> EncoderSettings:
        return encoder_settings(encoder, crf, preset, width, height, timing.rate)

    has_audio = source.info.has_audio
    # Moving the index to the front lets players start before the whole file is read.
    final_options = {"movflags": "+faststart"}
    # The output folder is made for the video and removed again (when empty) if writing it fails.
    with parent_folders(dst):
        temporaries: list[Path] = []
        try:
            video_path = temporary_sibling(dst, (".video" if has_audio else ".part") + dst.suffix)
            temporaries.append(video_path)
            job = EncodeJob(
                path=video_path,
                label=source.info.path.name,
                container_format=container_format,
                container_options={} if has_audio else final_options,
                make_settings=make_settings,
                timing=timing,
                colorspace=source.colorspace,
            )
            decoded, encoded = encode_video(
                source,
                job,
                process_batch,
                batch_frames=batch_frames,
                queue_size=queue_size,
                progress=progress,
            )
            final_path, audio = video_path, ()
            if has_audio:
                final_path = temporary_sibling(dst, ".part" + dst.suffix)
                temporaries.append(final_path)
                audio = mux_audio(video_path, source, final_path, container_format, final_options)
            os.replace(final_path, dst)
        except av.FFmpegError as exc:
            raise CodeFormerError(f"{dst.name}: cannot write video: {ffmpeg_reason(exc)}") from exc
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
