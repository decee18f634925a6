"""Long videos on a Ray cluster: segments cut at keyframes, restored in parallel, joined without re-encoding.

The driver reads the video stream's packets (no decoding) for every frame's presentation time and
which frames are keyframes, and cuts the frames into segments of about equal length at keyframes.
Each worker decodes its segment from the keyframe before it, plus ``overlap`` frames on both sides
so that face tracking and temporal smoothing see the same neighbourhood at a seam as in one long
run, restores the frames, and encodes only its own ones, with the single-machine run's timestamps
and H.264 settings, into a temporary segment file next to the destination. The driver then copies
the segments' packets one after another into one video stream (a remux, nothing re-encoded), muxes
the input's audio once with the single-machine code (:func:`codeformer.video.audio.mux_audio`) and
moves the result onto its name. Frame count, frame times, duration and audio match the
single-machine run; pixels match up to the encoder starting afresh at each seam.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import secrets
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from codeformer._atomic import atomic_path, temporary_sibling
from codeformer.imageio import encode_image
from codeformer.jobs.layout import frame_outputs, with_suffix_name
from codeformer.jobs.loop import describe_failure
from codeformer.jobs.ray.ledger import Ledger
from codeformer.jobs.ray.recipe import build_on_worker
from codeformer.jobs.ray.session import Workers, plan_workers, run_dataset
from codeformer.jobs.report import FaceReport, frame_entry
from codeformer.jobs.storage import Folder, split_location
from codeformer.progress import Progress
from codeformer.errors import CodeFormerError
from codeformer.options import RestoreOptions, VideoOptions
from codeformer.face.tracking import DEFAULT_MAX_GAP, DEFAULT_WINDOW
from codeformer.video.audio import mux_audio
from codeformer.video.probe import AVCOL_SPC_TO_SWS, Source, ffmpeg_reason, inspect_source, open_input
from codeformer.video.stages import (
    EncodeJob,
    FrameEncoder,
    Timing,
    encoder_settings,
    frame_to_bgr,
    h264_encoder,
    make_timing,
    next_pts,
)

if TYPE_CHECKING:
    from codeformer.jobs.ray.recipe import PipelineSource
    from codeformer.pipeline import Pipeline
    from codeformer.restoration import RestoreResult

__all__ = ["DEFAULT_OVERLAP", "FrameIndex", "Segment", "index_frames", "plan_segments", "restore_video_on_ray"]

logger = logging.getLogger(__name__)

# Frames of context on each side of a segment: the tracker decides a frame from this many frames
# around it (its smoothing window) and fills a face missed for up to max_gap frames.
DEFAULT_OVERLAP = DEFAULT_WINDOW + DEFAULT_MAX_GAP
_CONTAINER = "mp4"  # segments and result: what the single-machine run writes for <name>.mp4
_FINAL_OPTIONS = {"movflags": "+faststart"}  # as the single-machine writer: index first, playable while loading
_QUEUE_FRAMES = 8  # restored frames waiting for the encoder thread


@dataclass(frozen=True)
class FrameIndex:
    """Every frame of a video stream, from its packets: presentation times in display order, and keyframes."""

    pts: tuple[int, ...]  # input time base, increasing
    keyframes: tuple[int, ...]  # display indices of the frames a decoder can start from


def index_frames(path: Path, stream_index: int) -> FrameIndex | None:
    """Read the packets of a video stream (nothing decoded); None when frames cannot be told apart by time."""
    times: list[int] = []
    key_times: list[int] = []
    with open_input(path) as container:
        stream = container.streams[stream_index]
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue  # the demuxer's end-of-stream marker
                if packet.pts is None:
                    return None  # (old AVI and raw streams) no times to cut by
                times.append(int(packet.pts))
                if packet.is_keyframe:
                    key_times.append(int(packet.pts))
        except av.FFmpegError as error:
            raise CodeFormerError(f"{path.name}: cannot read video packets: {ffmpeg_reason(error)}") from None
    ordered = sorted(times)
    if not ordered or len(set(ordered)) != len(ordered):
        return None
    position = {stamp: index for index, stamp in enumerate(ordered)}
    return FrameIndex(tuple(ordered), tuple(sorted(position[stamp] for stamp in key_times)))


@dataclass(frozen=True)
class Segment:
    """A run of frames one worker restores (display indices, end exclusive) and the context it decodes."""

    number: int
    start: int  # first frame it encodes
    end: int  # one past the last frame it encodes
    context_start: int  # first frame it decodes and restores (start - overlap, or 0)
    context_end: int  # one past the last frame it restores (end + overlap, or the frame count)
    seek_pts: int | None  # the keyframe at or before context_start to seek to; None: from the beginning
    pts: tuple[int, ...]  # input times of frames context_start .. context_end - 1

    @property
    def frames(self) -> int:
        return self.end - self.start


def plan_segments(index: FrameIndex, count: int, overlap: int = DEFAULT_OVERLAP) -> list[Segment]:
    """Cut the frames into at most ``count`` segments of about equal length, each starting at a keyframe."""
    total = len(index.pts)
    candidates = [frame for frame in index.keyframes if 0 < frame < total]
    cuts: list[int] = []
    for part in range(1, max(1, count)):
        target = round(part * total / count)
        usable = [frame for frame in candidates if not cuts or frame > cuts[-1]]
        if usable:
            cuts.append(min(usable, key=lambda frame: (abs(frame - target), frame)))
    bounds = [0, *sorted(set(cuts)), total]
    segments = []
    for number, (start, end) in enumerate(zip(bounds, bounds[1:])):
        context_start, context_end = max(0, start - overlap), min(total, end + overlap)
        position = bisect.bisect_right(index.keyframes, context_start) - 1
        seek = index.pts[index.keyframes[position]] if context_start > 0 and position >= 0 else None
        segments.append(Segment(number, start, end, context_start, context_end, seek,
                                index.pts[context_start:context_end]))
    return segments


# ------------------------------------------------------------------------------------------ worker


@dataclass(frozen=True)
class _Timed:
    """Where a decoded frame goes: its output time, and whether this segment encodes it (or it is context)."""

    pts: int  # output time base
    duration: int
    keep: bool


def _decode_segment(source: Source, timing: Timing, segment: Segment) -> Iterator[tuple[_Timed, np.ndarray]]:
    """The segment's context frames, upright BGR, timed as the single-machine decoder times them."""
    matrix = AVCOL_SPC_TO_SWS[source.colorspace]
    quarter_turns = (source.info.rotation // 90) % 4
    scaler = VideoReformatter()
    wanted = {stamp: segment.context_start + offset for offset, stamp in enumerate(segment.pts)}
    last = segment.pts[-1]
    previous: int | None = None
    previous_duration = timing.default_duration
    with open_input(source.info.path) as container:
        stream = container.streams[source.stream_index]
        stream.thread_type = "AUTO"
        if segment.seek_pts is not None:
            container.seek(segment.seek_pts, stream=stream, backward=True, any_frame=False)
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue  # a damaged packet: skipped, as the single-machine decoder does
                for frame in frames:
                    index = wanted.get(frame.pts) if frame.pts is not None else None
                    if index is None:
                        continue  # before the context (decoded from the keyframe on) or unindexed
                    if timing.fixed_rate:
                        pts, duration = index, 1
                    else:
                        pts = next_pts(frame.pts - timing.origin, previous, previous_duration)
                        duration = frame.duration or timing.default_duration
                    previous, previous_duration = pts, duration
                    keep = segment.start <= index < segment.end
                    yield _Timed(pts, duration, keep), frame_to_bgr(frame, matrix, quarter_turns, scaler)
                    if frame.pts == last:
                        return
        except av.FFmpegError as error:
            raise CodeFormerError(f"{source.info.path.name}: cannot decode video: {ffmpeg_reason(error)}") from None


def restore_segment(
    pipeline: Pipeline,
    options: RestoreOptions,
    src: Path,
    segment: Segment,
    dst: Path,
    video: VideoOptions | None = None,
    on_frame: Callable[[int, RestoreResult], None] | None = None,
) -> int:
    """Restore one segment of ``src`` into the video file ``dst`` (no audio); returns the frames written.

    Decoding and restoring run in this thread (through the pipeline's frame processor, as
    :meth:`Pipeline.restore_video`), encoding in another (the single-machine encoder stage).
    ``on_frame(index, result)`` sees the result of each frame the segment encodes (not its context
    frames), ``index`` counted from the video's first frame, as in :meth:`Pipeline.restore_video`.
    """
    video = video or VideoOptions()
    source = inspect_source(src)
    timing = make_timing(source, video.fps)
    codec = h264_encoder()
    job = EncodeJob(
        path=dst, label=f"{src.name} (segment {segment.number})", container_format=_CONTAINER, container_options={},
        make_settings=lambda width, height: encoder_settings(codec, video.crf, video.preset, width, height, timing.rate),
        timing=timing, colorspace=source.colorspace,
    )

    def seen(local: int, result: RestoreResult) -> None:
        index = segment.context_start + local
        if on_frame is not None and segment.start <= index < segment.end:
            on_frame(index, result)

    processor = pipeline.frame_processor(options, temporal_smoothing=video.temporal_smoothing, on_frame=seen)
    frames_per_step = pipeline.frames_per_step
    pending: deque[_Timed] = deque()  # frames handed to the processor whose result has not come back
    with FrameEncoder(job, queue_size=_QUEUE_FRAMES) as encoder:

        def emit(images: Sequence[np.ndarray]) -> None:
            for image in images:
                timed = pending.popleft()
                if timed.keep:
                    encoder.write(image, timed.pts, timed.duration)

        batch: list[np.ndarray] = []
        for timed, image in _decode_segment(source, timing, segment):
            pending.append(timed)
            batch.append(image)
            if len(batch) == frames_per_step:
                emit(processor.process(batch))
                batch = []
        if batch:
            emit(processor.process(batch))
        emit(processor.flush())
    return encoder.frames


@dataclass(frozen=True)
class VideoJob:
    """Everything a segment worker needs; sent once to each actor."""

    source: PipelineSource
    video: str  # path or URL every worker can read
    out: Folder
    segments: tuple[Segment, ...]
    segment_names: tuple[str, ...]  # temporary files in ``out``, one per segment
    settings: VideoOptions
    threads: int
    describe: Callable[[BaseException], str]
    suffix: str | None = None
    report: bool = False  # send back each kept frame's face entries for report.json
    save_frames: bool = False  # write each kept frame's faces and picture, as the single-machine run


class _SegmentWorker:
    """A Ray actor: loads the pipeline once, then restores segments into temporary files in the output folder."""

    def __init__(self, job: VideoJob) -> None:
        self._job = job
        self._pipeline, self._options = build_on_worker(job.source, job.threads)

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        job = self._job
        number = int(row["segment"])
        segment, name = job.segments[number], job.segment_names[number]
        started = time.perf_counter()
        frames_report: list[dict[str, Any]] = []

        def on_frame(index: int, result: RestoreResult) -> None:
            if job.report:
                frames_report.append(frame_entry(index, result))
            if job.save_frames:
                for relative, image in frame_outputs(index, job.suffix, result):
                    job.out.write_bytes(relative, encode_image(relative, image))

        try:
            folder, file = split_location(job.video)
            with folder.local_copy(file) as src, contextlib.ExitStack() as stack:
                if job.out.is_local:
                    dst = Path(job.out.child(name))
                else:
                    dst = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codeformer-"))) / name
                frames = restore_segment(self._pipeline, self._options, src, segment, dst, job.settings,
                                         on_frame=on_frame if job.report or job.save_frames else None)
                if not job.out.is_local:
                    job.out.put_file(dst, name)
        except Exception as error:  # noqa: BLE001 - the driver reports it as the video's failure
            return {"segment": number, "frames": 0, "seconds": 0.0, "error": job.describe(error), "entries": ""}
        return {"segment": number, "frames": frames, "seconds": time.perf_counter() - started, "error": "",
                "entries": json.dumps(frames_report) if job.report else ""}


# ------------------------------------------------------------------------------------------ driver


def concatenate_segments(parts: Sequence[Path], dst: Path, container_options: Mapping[str, str]) -> int:
    """Copy the video packets of ``parts``, in order, into one stream in ``dst`` (no re-encoding); returns packets."""
    written = 0
    with av.open(str(dst), "w", format=_CONTAINER, container_options=dict(container_options)) as out:
        stream = None
        extradata = None
        last_dts: int | None = None
        for part in parts:
            with av.open(str(part), "r") as segment:
                source = segment.streams.video[0]
                if stream is None:
                    stream, extradata = out.add_stream_from_template(source), source.codec_context.extradata
                elif source.codec_context.extradata != extradata:
                    raise CodeFormerError("video segments were encoded with different H.264 settings (workers with "
                                          "different PyAV builds?); install the same PyAV on every worker")
                for packet in segment.demux(source):
                    if not packet.size:
                        continue  # end-of-stream marker
                    if last_dts is not None and packet.dts is not None and packet.dts <= last_dts:
                        # The encoder's first decode times reach back before its segment; a stream's must grow.
                        if packet.pts is not None and last_dts + 1 > packet.pts:
                            raise CodeFormerError(f"{dst.name}: cannot join video segments (decode times overlap)")
                        packet.dts = last_dts + 1
                    last_dts = packet.dts
                    packet.stream = stream
                    out.mux(packet)
                    written += 1
    return written


def _compose(parts: Sequence[Path], source: Source, dst: Path) -> None:
    """The segments joined into ``dst``, with the input's audio muxed once, as the single-machine writer does."""
    if not source.info.has_audio:
        concatenate_segments(parts, dst, _FINAL_OPTIONS)
        return
    video_only = temporary_sibling(dst, ".video.mp4")
    try:
        concatenate_segments(parts, video_only, {})
        mux_audio(video_only, source, dst, _CONTAINER, _FINAL_OPTIONS)
    finally:
        video_only.unlink(missing_ok=True)


def restore_video_on_ray(
    source: PipelineSource,
    video: str,
    out: str,
    *,
    suffix: str | None = None,
    segments: int | None = None,
    workers: Workers | None = None,
    settings: VideoOptions | None = None,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = True,
    describe: Callable[[BaseException], str] = describe_failure,
    report_faces: bool = False,
    save_frames: bool = False,
) -> str | None:
    """Restore one video (path or URL) into ``<out>/<name>[_<suffix>].mp4`` on the connected Ray instance.

    ``segments``: how many pieces to cut it into (default: one per worker; fewer when the video has
    fewer keyframes); ``settings``: smoothing, frame rate and H.264 settings (the defaults of
    :class:`~codeformer.options.VideoOptions`). Returns the output's location, or None when it already exists (resumed).
    Writes ``<out>/ray_report.jsonl``; ``report_faces``: the video's faces frame by frame into
    ``<out>/report.json`` too (entries of earlier runs kept); ``save_frames``: each frame's faces and
    picture as the single-machine run writes them. Any failure is one :class:`CodeFormerError`; nothing is left
    under the output's name, and the segment files are removed, however the job ends.
    """
    settings = settings or VideoOptions()
    out_folder = Folder(out)
    name = with_suffix_name(Path(split_location(video)[1]).stem, suffix, ".mp4")
    ledger = Ledger()
    ledger.add(video, output=out_folder.child(name))
    if out_folder.exists(name):
        logger.info("%s already exists: skipped", out_folder.child(name))
        ledger.add(video, "skipped")
        ledger.write(out_folder)
        return None
    workers = workers or plan_workers(device=source.device)
    input_folder, input_name = split_location(video)
    token = secrets.token_hex(4)
    names: list[str] = []
    try:
        with input_folder.local_copy(input_name) as local:
            probe = inspect_source(local)
            index = index_frames(local, probe.stream_index)
            if index is None:
                raise CodeFormerError(f"{input_name}: its frames carry no distinct timestamps, so it cannot be cut "
                                      "into segments; restore it in one process, without Ray")
            plan = plan_segments(index, segments or workers.count, overlap)
            if out_folder.is_local:
                # The segments are written here (the report always is): the folder is made now.
                out_folder.local_path.mkdir(parents=True, exist_ok=True)
            names = [f".{name}.{token}.segment{segment.number:03d}.mp4" for segment in plan]
            logger.info("%s: %d frames in %d segment%s on %s", input_name, len(index.pts), len(plan),
                        "" if len(plan) == 1 else "s", workers.describe())
            job = VideoJob(source, video, out_folder, tuple(plan), tuple(names), settings, workers.cpus, describe,
                           suffix=suffix, report=report_faces, save_frames=save_frames)
            frames, frames_report = _run_segments(job, workers, input_name, progress)
            if frames != len(index.pts):
                logger.warning("%s: %d frames restored of the %d its packets list", input_name, frames,
                               len(index.pts))
            _finish(out_folder, name, names, probe)
            if report_faces:
                FaceReport.in_folder(out_folder, keep_existing=True).add_video(input_name, frames_report)
        ledger.add(video, "done", frames=frames, segments=len(plan))
        return out_folder.child(name)
    except CodeFormerError as error:
        ledger.add(video, "failed", error=str(error))
        raise
    finally:
        for segment_name in names:
            out_folder.remove(segment_name)
        ledger.write(out_folder)


def _run_segments(job: VideoJob, workers: Workers, label: str,
                  progress: bool) -> tuple[int, list[dict[str, Any]]]:
    """Every segment through the actor pool; the frames written and their report entries in frame order,
    or the first segment's failure raised."""
    errors: list[str] = []
    frames = 0
    entries: dict[int, list[dict[str, Any]]] = {}  # segment -> its frames' report entries
    with Progress(total=len(job.segments), desc=label, unit="segment", enabled=progress) as bar:

        def on_row(row: Mapping[str, Any]) -> None:
            nonlocal frames
            if row["error"]:
                errors.append(str(row["error"]))
            else:
                frames += int(row["frames"])
                if row["entries"]:
                    entries[int(row["segment"])] = json.loads(row["entries"])
                logger.debug("segment %d: %d frames in %.1f s", row["segment"], row["frames"], row["seconds"])
            bar.update(1, f"segment {row['segment']}")

        run_dataset([{"segment": segment.number} for segment in job.segments], _SegmentWorker, job, workers, on_row)
    if errors:
        raise CodeFormerError(errors[0])
    return frames, [frame for number in sorted(entries) for frame in entries[number]]


def _finish(out_folder: Folder, name: str, segment_names: Sequence[str], probe: Source) -> None:
    """Join the segments (fetched here if remote), mux the audio, and move the result onto its name."""
    if out_folder.is_local:
        destination = out_folder.local_path / name
        with atomic_path(destination, suffix=".mp4") as final:
            _compose([out_folder.local_path / part for part in segment_names], probe, final)
        return
    with tempfile.TemporaryDirectory(prefix="codeformer-") as scratch, contextlib.ExitStack() as stack:
        parts = [stack.enter_context(out_folder.local_copy(part)) for part in segment_names]
        final = Path(scratch) / name
        _compose(parts, probe, final)
        out_folder.put_file(final, name)
