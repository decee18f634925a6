"""Tests for codeformer.video: streaming decode -> process -> encode with audio kept."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from codeformer.video import stages
from codeformer.errors import CodeFormerError
from codeformer.video import (
    VIDEO_EXTENSIONS,
    ProcessBatch,
    is_video_path,
    probe_video,
    transform_video,
)

sys.path.insert(0, str(Path(__file__).parent))
from video_factory import (  # noqa: E402
    AUDIO_AMPLITUDE,
    AUDIO_RATE,
    ctrl_c_acts,
    face_image,
    gradient_image,
    make_clip,
)

FRAMES = 12
FPS = 25
SIZE = (160, 120)  # (width, height)
FRAME_S = 1 / FPS
# H.264 at CRF 18 is lossy: mean absolute error per pixel (grey levels) tolerated against the
# input; the clips carry noise of sigma 2, which the encoder partly smooths away.
IDENTITY_MAE = 4.0
# 2x upscale then INTER_AREA back to the input size adds interpolation error on top.
UPSCALE_MAE = 6.0
# An AAC frame (1024 samples): the granularity of re-encoded audio durations and start times.
AAC_FRAME_S = 1024 / AUDIO_RATE
# Copied audio keeps its packets, but Matroska stores times in milliseconds, so decoder trimming
# at the ends of a copied track can shift by a millisecond or so.
COPIED_AUDIO_TOLERANCE_S = 0.0025
LATE_AUDIO_S = 0.2  # audio start of the sync clips, after the first video frame
SYNC_TOLERANCE_S = 0.002  # audio/video offset kept to 2 ms (lip sync needs ~20 ms)
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Helpers


def identity(batch: list[np.ndarray]) -> list[np.ndarray]:
    return batch


def upscale2x(batch: list[np.ndarray]) -> list[np.ndarray]:
    return [cv2.resize(f, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR) for f in batch]


def decode_frames(path: Path) -> list[np.ndarray]:
    """All frames as BGR, as a player would show them (PyAV honours the colour tags)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.pts * stream.time_base) for frame in container.decode(stream)]


def audio_summary(path: Path, index: int) -> dict:
    """Codec, start time and duration (decoded samples / rate) of one audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams[index]
        frames = list(container.decode(stream))
        samples = sum(frame.samples for frame in frames)
        return {
            "codec": stream.codec_context.codec.canonical_name,
            "start": frames[0].time,
            "duration": samples / stream.codec_context.sample_rate,
        }


def audio_onset_s(path: Path) -> float:
    """When the first audio track's tone becomes audible: its first sample above half volume.

    Measured on decoded samples, so codec priming and container edit lists are accounted for.
    """
    resampler = av.AudioResampler(format="fltp")
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            for planar in resampler.resample(frame):
                level = np.abs(planar.to_ndarray()).max(axis=0)  # (samples,)
                loud = np.flatnonzero(level > AUDIO_AMPLITUDE / 2)
                if loud.size:
                    return planar.time + loud[0] / planar.sample_rate
    raise AssertionError(f"{path.name}: no audible audio")


def stream_summary(path: Path) -> dict:
    """Video codec/format/size/rate/start/duration/tags and per-audio codec/start/duration."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        first, last = frames[0], frames[-1]
        audio = [audio_summary(path, a.index) for a in container.streams.audio]
        return {
            "codec": stream.codec_context.codec.canonical_name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "rate": stream.average_rate,
            "start": first.time,
            "duration": last.time + float(last.duration * last.time_base) - first.time,
            "colorspace": first.colorspace,
            "rotation": first.rotation,
            "audio": audio,
        }


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def video_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("codeformer-video-")]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short clip of each kind the tests use (made once: ~0.5 s in all)."""
    folder = tmp_path_factory.mktemp("clips")
    face = face_image(SIZE)
    specs: dict[str, dict] = {
        "aac.mp4": dict(audio="aac", image=face),
        "pcm.mov": dict(audio="pcm_s16le"),
        "pcm.avi": dict(audio="pcm_s16le", image=face),
        "mp3.mkv": dict(audio="mp3"),
        "opus.webm": dict(audio="opus"),
        "silent.mp4": dict(audio=None, image=face),
        "odd.mp4": dict(audio=None, size=(161, 121)),
        "vfr.mp4": dict(audio="aac", vfr=True),
        "late_audio.mp4": dict(audio="aac", audio_offset_s=LATE_AUDIO_S),
        "late_pcm.mov": dict(audio="pcm_s16le", audio_offset_s=LATE_AUDIO_S),
        "late_mp3.mkv": dict(audio="mp3", audio_offset_s=LATE_AUDIO_S),
        "late_start.mkv": dict(audio="aac", audio_offset_s=LATE_AUDIO_S, start_s=1.0),
        "rotated.mp4": dict(audio=None, image=face, rotation=90),
        "bt709.mp4": dict(audio=None, image=gradient_image(SIZE), bt709=True),
    }
    made = {}
    for name, spec in specs.items():
        spec.setdefault("frames", FRAMES)
        spec.setdefault("fps", FPS)
        spec.setdefault("size", SIZE)
        made[name] = make_clip(folder / name, **spec)
    return made


# --------------------------------------------------------------------------------------------
# Paths and probing


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clip.mp4", True),
        ("CLIP.MOV", True),
        ("a.b.Mkv", True),
        ("x.webm", True),
        ("x.m4v", True),
        ("x.avi", True),
        ("face.png", False),
        ("clip.mp4.txt", False),
        ("mp4", False),
    ],
)
def test_is_video_path(name: str, expected: bool) -> None:
    assert is_video_path(name) is expected
    assert is_video_path(Path("some/folder") / name) is expected


def test_video_extensions_are_lowercase_with_dot() -> None:
    assert all(ext.startswith(".") and ext == ext.lower() for ext in VIDEO_EXTENSIONS)


def test_probe_mp4_with_audio(clips: dict[str, Path]) -> None:
    info = probe_video(clips["aac.mp4"])
    assert (info.width, info.height) == SIZE
    assert info.fps == FPS
    assert info.frame_count == FRAMES
    assert info.duration_s == pytest.approx(FRAMES / FPS, abs=1e-3)
    assert info.codec == "h264"
    assert info.rotation == 0
    assert info.has_audio
    (track,) = info.audio_streams
    assert (track.codec, track.sample_rate, track.channels) == ("aac", AUDIO_RATE, 2)
    assert track.describe().startswith("aac 48000 Hz stereo")


def test_probe_without_audio_and_other_containers(clips: dict[str, Path]) -> None:
    assert not probe_video(clips["silent.mp4"]).has_audio
    avi = probe_video(clips["pcm.avi"])
    assert (avi.codec, avi.frame_count, avi.fps) == ("mpeg4", FRAMES, FPS)
    assert avi.audio_streams[0].codec == "pcm_s16le"
    mkv = probe_video(clips["mp3.mkv"])  # no frame count in the header: estimated from duration
    assert mkv.frame_count is not None and abs(mkv.frame_count - FRAMES) <= 1
    assert mkv.audio_streams[0].codec == "mp3"


def test_probe_reports_upright_size_of_rotated_video(clips: dict[str, Path]) -> None:
    info = probe_video(clips["rotated.mp4"])
    assert info.rotation == 90
    assert (info.width, info.height) == (SIZE[1], SIZE[0])


def _write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        samples = np.zeros((2, 1024), np.float32)
        for index in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = AUDIO_RATE, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("kind", ["garbage", "truncated", "audio_only", "missing", "empty"])
def test_unreadable_files_raise_one_line_error(
    kind: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    elif kind == "truncated":  # the index ('moov') is at the end of our clips: cut it off
        data = clips["silent.mp4"].read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "audio_only":
        _write_audio_only(path)
    elif kind == "empty":
        path.write_bytes(b"")
    calls = (
        lambda: probe_video(path),
        lambda: transform_video(path, tmp_path / "out.mp4", identity, progress=False),
    )
    for call in calls:
        with pytest.raises(CodeFormerError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("clip.mp4: cannot decode video: ")
        assert "\n" not in message
        if kind == "audio_only":
            assert "no video stream" in message
    assert not (tmp_path / "out.mp4").exists()


# --------------------------------------------------------------------------------------------
# Round trips through the containers


@pytest.mark.parametrize(
    ("name", "process", "scale", "audio"),
    [
        ("aac.mp4", identity, 1, ["copy"]),
        ("aac.mp4", upscale2x, 2, ["copy"]),
        ("pcm.mov", upscale2x, 2, ["aac"]),
        ("pcm.avi", identity, 1, ["aac"]),
        ("mp3.mkv", upscale2x, 2, ["copy"]),
        ("opus.webm", identity, 1, ["aac"]),
        ("silent.mp4", upscale2x, 2, []),
    ],
)
def test_round_trip_keeps_frames_timing_audio_and_content(
    name: str,
    process: ProcessBatch,
    scale: int,
    audio: list[str],
    clips: dict[str, Path],
    tmp_path: Path,
) -> None:
    src = clips[name]
    dst = tmp_path / "out" / "result.mp4"  # the folder does not exist yet
    stats = transform_video(src, dst, process, batch_frames=5, progress=False)

    assert stats.output == dst and dst.is_file()
    assert stats.frames_in == stats.frames_out == FRAMES
    assert (stats.width, stats.height) == (SIZE[0] * scale, SIZE[1] * scale)
    assert list(stats.audio) == audio
    assert sorted(p.name for p in dst.parent.iterdir()) == ["result.mp4"]  # no temporaries

    before, after = stream_summary(src), stream_summary(dst)
    assert (after["codec"], after["pix_fmt"]) == ("h264", "yuv420p")
    assert (after["width"], after["height"]) == (SIZE[0] * scale, SIZE[1] * scale)
    assert after["rate"] == FPS
    assert after["duration"] == pytest.approx(before["duration"], abs=FRAME_S)
    assert after["start"] == pytest.approx(before["start"], abs=1e-3)

    assert len(after["audio"]) == len(audio)
    for mode, old, new in zip(audio, before["audio"], after["audio"]):
        expected_codec = old["codec"] if mode == "copy" else "aac"
        assert new["codec"] == expected_codec
        tolerance = COPIED_AUDIO_TOLERANCE_S if mode == "copy" else 2 * AAC_FRAME_S
        assert new["duration"] == pytest.approx(old["duration"], abs=tolerance)
        assert new["start"] - after["start"] == pytest.approx(
            old["start"] - before["start"], abs=tolerance
        )

    inputs, outputs = decode_frames(src), decode_frames(dst)
    assert len(outputs) == FRAMES
    for original, result in zip(inputs, outputs):
        assert result.shape == (SIZE[1] * scale, SIZE[0] * scale, 3)
        if scale != 1:
            result = cv2.resize(result, SIZE, interpolation=cv2.INTER_AREA)
        assert mean_abs_error(original, result) < (IDENTITY_MAE if scale == 1 else UPSCALE_MAE)


def test_process_batch_sees_every_frame_in_order_in_batches(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    seen: list[np.ndarray] = []
    sizes: list[int] = []

    def record(batch: list[np.ndarray]) -> list[np.ndarray]:
        sizes.append(len(batch))
        for frame in batch:
            assert frame.dtype == np.uint8 and frame.shape == (SIZE[1], SIZE[0], 3)
            assert frame.flags["C_CONTIGUOUS"]
        seen.extend(f.copy() for f in batch)
        return batch

    transform_video(clips["silent.mp4"], tmp_path / "o.mp4", record, batch_frames=5, progress=False)
    assert sizes == [5, 5, 2]
    # Decoded as we decode: rounded, with full-resolution chroma interpolation (PyAV's default truncates).
    with av.open(str(clips["silent.mp4"])) as container:
        expected = [frame.reformat(format="bgr24", interpolation=stages._DECODE_FLAGS).to_ndarray()
                    for frame in container.decode(container.streams.video[0])]
    assert len(seen) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(seen, expected))


def test_variable_frame_rate_timestamps_are_kept(clips: dict[str, Path], tmp_path: Path) -> None:
    src = clips["vfr.mp4"]
    stats = transform_video(src, tmp_path / "vfr.mp4", upscale2x, progress=False)
    before, after = frame_times(src), frame_times(stats.output)
    assert len(set(np.round(np.diff(before), 4))) > 1  # the clip really is variable rate
    assert after == pytest.approx(before, abs=1e-4)
    assert stream_summary(stats.output)["duration"] == pytest.approx(
        stream_summary(src)["duration"], abs=1e-3
    )


@pytest.mark.parametrize(
    ("pts", "previous", "previous_duration", "expected"),
    [
        (0, None, 1, 0),  # first frame keeps its time
        (None, None, 1, 0),  # first frame without a time starts at 0
        (700, 512, 512, 700),  # increasing times are kept as they are (VFR)
        (None, 512, 512, 1024),  # missing time: right after the previous frame
        (512, 512, 512, 1024),  # repeated time: moved after the previous frame
        (100, 512, 0, 513),  # going backwards with no duration known: one tick later
    ],
)
def test_frame_times_stay_strictly_increasing(
    pts: int | None, previous: int | None, previous_duration: int, expected: int
) -> None:
    assert stages.next_pts(pts, previous, previous_duration) == expected


def test_fps_override_retimes_at_constant_rate(clips: dict[str, Path], tmp_path: Path) -> None:
    stats = transform_video(
        clips["vfr.mp4"], tmp_path / "fps.mp4", identity, fps=10, progress=False
    )
    times = frame_times(stats.output)
    assert len(times) == FRAMES
    assert times == pytest.approx([i / 10 for i in range(FRAMES)], abs=1e-4)
    summary = stream_summary(stats.output)
    assert summary["rate"] == 10
    assert summary["duration"] == pytest.approx(FRAMES / 10, abs=1e-3)
    assert summary["audio"], "the audio track is kept"


def test_fractional_fps_override(clips: dict[str, Path], tmp_path: Path) -> None:
    stats = transform_video(
        clips["silent.mp4"], tmp_path / "ntsc.mp4", identity, fps=29.97, progress=False
    )
    assert stream_summary(stats.output)["rate"] == Fraction(2997, 100)


@pytest.mark.parametrize(
    "name", ["late_audio.mp4", "late_pcm.mov", "late_mp3.mkv", "late_start.mkv"]
)
def test_audio_stays_in_sync(name: str, clips: dict[str, Path], tmp_path: Path) -> None:
    src = clips[name]
    stats = transform_video(src, tmp_path / "sync.mp4", upscale2x, progress=False)
    video_start = stream_summary(stats.output)["start"]
    before = audio_onset_s(src) - stream_summary(src)["start"]
    after = audio_onset_s(stats.output) - video_start
    assert before == pytest.approx(LATE_AUDIO_S, abs=SYNC_TOLERANCE_S)  # the tone starts late
    assert after == pytest.approx(before, abs=SYNC_TOLERANCE_S)
    assert video_start == pytest.approx(0.0, abs=1e-3)  # a late-starting input starts at 0


def test_odd_size_is_padded_by_replicating_the_edge(
    clips: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="codeformer.video"):
        stats = transform_video(clips["odd.mp4"], tmp_path / "odd.mp4", identity, progress=False)
    assert (stats.width, stats.height) == (162, 122)
    padding_logs = [r for r in caplog.records if "padding" in r.getMessage()]
    assert len(padding_logs) == 1
    inputs, outputs = decode_frames(clips["odd.mp4"]), decode_frames(stats.output)
    for original, result in zip(inputs, outputs):
        assert result.shape == (122, 162, 3)
        assert mean_abs_error(original, result[:121, :161]) < IDENTITY_MAE
        assert mean_abs_error(result[:121, 161], result[:121, 160]) < IDENTITY_MAE  # edge copy
        assert mean_abs_error(result[121, :161], result[120, :161]) < IDENTITY_MAE


def test_rotated_video_is_processed_upright(clips: dict[str, Path], tmp_path: Path) -> None:
    shapes = set()

    def record(batch: list[np.ndarray]) -> list[np.ndarray]:
        shapes.update(frame.shape for frame in batch)
        return batch

    stats = transform_video(clips["rotated.mp4"], tmp_path / "rot.mp4", record, progress=False)
    assert shapes == {(SIZE[0], SIZE[1], 3)}  # portrait: 120 wide, 160 high
    summary = stream_summary(stats.output)
    assert (summary["width"], summary["height"], summary["rotation"]) == (SIZE[1], SIZE[0], 0)
    stored = decode_frames(clips["rotated.mp4"])  # as stored, before the display rotation
    for original, result in zip(stored, decode_frames(stats.output)):
        assert mean_abs_error(np.rot90(original, 1), result) < IDENTITY_MAE  # 90 deg CCW


def test_colour_matrix_of_the_input_is_kept(clips: dict[str, Path], tmp_path: Path) -> None:
    src = clips["bt709.mp4"]
    stats = transform_video(src, tmp_path / "709.mp4", identity, progress=False)
    summary = stream_summary(stats.output)
    assert summary["colorspace"] == stream_summary(src)["colorspace"] == 1  # AVCOL_SPC_BT709
    for original, result in zip(decode_frames(src), decode_frames(stats.output)):
        assert mean_abs_error(original, result) < 3.0  # a BT.601/709 mix-up gives about 5.5


def test_untagged_input_gives_tagged_bt601_output(clips: dict[str, Path], tmp_path: Path) -> None:
    stats = transform_video(clips["silent.mp4"], tmp_path / "601.mp4", identity, progress=False)
    assert stream_summary(stats.output)["colorspace"] == 6  # AVCOL_SPC_SMPTE170M (BT.601)


def test_progress_bar_counts_frames(
    clips: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: a bar (a log gets lines, test_progress)
    transform_video(clips["silent.mp4"], tmp_path / "p.mp4", identity, progress=True)
    assert f"{FRAMES}/{FRAMES}" in capsys.readouterr().err


def test_existing_output_is_replaced(clips: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "again.mp4"
    dst.write_bytes(b"old")
    transform_video(clips["silent.mp4"], dst, identity, progress=False)
    assert len(decode_frames(dst)) == FRAMES


# --------------------------------------------------------------------------------------------
# Failures: errors propagate, threads stop, nothing is left behind


class Boom(RuntimeError):
    pass


def _failing_after(calls: int, error: BaseException) -> ProcessBatch:
    count = 0

    def process(batch: list[np.ndarray]) -> list[np.ndarray]:
        nonlocal count
        count += 1
        if count > calls:
            raise error
        return batch

    return process


@pytest.mark.parametrize("error", [Boom("network failed"), KeyboardInterrupt()])
@pytest.mark.parametrize("name", ["aac.mp4", "silent.mp4"])
def test_error_in_process_batch_propagates_and_cleans_up(
    error: BaseException, name: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    dst = tmp_path / "result.mp4"
    dst.write_bytes(b"previous run")  # an older result must survive a failed run untouched
    with pytest.raises(type(error)):
        transform_video(clips[name], dst, _failing_after(1, error), batch_frames=2, progress=False)
    assert dst.read_bytes() == b"previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.mp4"]
    assert video_threads() == []


def test_failure_in_the_encoder_thread_propagates(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise Boom("encoder failed")

    monkeypatch.setattr(stages, "_to_yuv_frame", broken)
    with pytest.raises(Boom, match="encoder failed"):
        transform_video(clips["aac.mp4"], tmp_path / "o.mp4", identity, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert video_threads() == []


def test_failure_in_the_decoder_thread_propagates(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = stages.frame_to_bgr
    decoded = 0

    def flaky(*args: object) -> np.ndarray:
        nonlocal decoded
        decoded += 1
        if decoded > 3:
            raise Boom("decoder failed")
        return original(*args)

    monkeypatch.setattr(stages, "frame_to_bgr", flaky)
    with pytest.raises(Boom, match="decoder failed"):
        transform_video(
            clips["aac.mp4"], tmp_path / "o.mp4", identity, batch_frames=2, progress=False
        )
    assert list(tmp_path.iterdir()) == []
    assert video_threads() == []


_INTERRUPT_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from codeformer.video import transform_video

    def slow(batch):
        print("processing", flush=True)
        time.sleep(0.05)
        return batch

    try:
        transform_video(sys.argv[1], sys.argv[2], slow, progress=False)
    except KeyboardInterrupt:
        print("threads:", sorted(t.name for t in threading.enumerate()), flush=True)
        raise
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child needs POSIX")
def test_ctrl_c_stops_promptly_and_leaves_nothing(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=200, fps=FPS, size=SIZE)
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPT_CHILD, str(src), str(tmp_path / "out.mp4")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        preexec_fn=ctrl_c_acts,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "processing"  # mid-run: threads are busy
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)  # a hang guard, not a speed requirement
    assert "KeyboardInterrupt" in err
    assert child.returncode != 0
    threads_line = next(line for line in out.splitlines() if line.startswith("threads:"))
    assert "codeformer-video" not in threads_line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


@pytest.mark.parametrize(
    ("process", "message"),
    [
        (lambda batch: batch[:-1], "must return a list of"),
        (lambda batch: [f.astype(np.float32) for f in batch], "uint8"),
        (lambda batch: [f[: 8 + i] for i, f in enumerate(batch)], "different sizes"),
    ],
)
def test_bad_process_batch_results_are_rejected(
    process: ProcessBatch,
    message: str,
    clips: dict[str, Path],
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=message):
        transform_video(clips["silent.mp4"], tmp_path / "o.mp4", process, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(crf=60), "crf must be"),
        (dict(preset="fastest"), "unknown preset"),
        (dict(batch_frames=0), "batch_frames"),
        (dict(queue_size=0), "queue_size"),
        (dict(fps=0.0), "frame rate"),
        (dict(fps=float("nan")), "frame rate"),
    ],
)
def test_invalid_options_raise(
    options: dict, message: str, clips: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(CodeFormerError, match=message):
        transform_video(
            clips["silent.mp4"], tmp_path / "o.mp4", identity, progress=False, **options
        )


def test_unsupported_output_container_raises(clips: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CodeFormerError, match="unsupported video output"):
        transform_video(clips["silent.mp4"], tmp_path / "o.avi", identity, progress=False)


def test_h264_encoder_is_available() -> None:
    assert stages.h264_encoder() in stages.H264_ENCODERS


def test_encoder_settings_map_crf_and_preset() -> None:
    x264 = stages.encoder_settings("libx264", 18, "slow", 1280, 720, Fraction(30))
    assert x264.options == {"crf": "18", "preset": "slow"} and x264.bit_rate is None
    # libopenh264 has only bit-rate control: 6 CRF steps down double the bit rate.
    rates = [
        stages.encoder_settings("libopenh264", crf, "medium", 1280, 720, Fraction(30)).bit_rate
        for crf in (23, 17)
    ]
    assert rates[0] is not None and rates[1] == pytest.approx(2 * rates[0], rel=1e-6)
    assert 1_000_000 < rates[0] < 10_000_000  # a sane 720p30 bit rate


# --------------------------------------------------------------------------------------------
# Memory does not grow with the video's length

# Peak RSS comes from VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so a child
# of the (larger) pytest process would report the parent's peak and the test could never fail.
_MEMORY_CHILD = textwrap.dedent(
    """
    import sys
    import cv2
    from codeformer.video import transform_video

    def upscale(batch):
        return [cv2.resize(f, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR) for f in batch]

    transform_video(sys.argv[1], sys.argv[2], upscale, progress=False, preset="ultrafast")
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))  # KiB
    """
)
SHORT_FRAMES, LONG_FRAMES = 40, 400
# Allowed peak-RSS growth from the short to the long clip. Holding the long clip's frames would
# cost 400 x (57.6 KB in + 230 KB out) = 115 MB; measured growth of the streaming code: ~1-2 MB.
MEMORY_MARGIN_KIB = 12 * 1024


def _peak_rss_kib(src: Path, dst: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(src), str(dst)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_video_length(tmp_path: Path) -> None:
    short = make_clip(tmp_path / "short.mp4", frames=SHORT_FRAMES, fps=FPS, size=SIZE)
    long = make_clip(tmp_path / "long.mp4", frames=LONG_FRAMES, fps=FPS, size=SIZE)
    short_kib = _peak_rss_kib(short, tmp_path / "short_out.mp4")
    long_kib = _peak_rss_kib(long, tmp_path / "long_out.mp4")
    assert len(decode_frames(tmp_path / "long_out.mp4")) == LONG_FRAMES
    assert long_kib <= short_kib + MEMORY_MARGIN_KIB, (short_kib, long_kib)


@pytest.mark.parametrize("bt709", [False, True])
def test_unchanged_frames_keep_their_levels(tmp_path: Path, bt709: bool) -> None:
    """An identity pass must not shift levels: swscale's truncating conversions made it ~2 levels darker."""
    src = make_clip(tmp_path / "in.mp4", frames=4, size=(400, 360), audio=None, image=face_image(), bt709=bt709)
    dst = tmp_path / "out.mp4"
    transform_video(src, dst, identity, crf=0, progress=False)
    for before, after in zip(decode_frames(src), decode_frames(dst)):
        offsets = (after.astype(np.float64) - before).reshape(-1, 3).mean(axis=0)  # B, G, R
        assert np.all(np.abs(offsets) < 0.5), offsets


def _encode_job(path: Path) -> stages.EncodeJob:
    timing = stages.Timing(Fraction(1, 25), Fraction(25), 1, 0, fixed_rate=True)
    codec = stages.h264_encoder()
    return stages.EncodeJob(path=path, label="test", container_format="mp4", container_options={},
                            make_settings=lambda w, h: stages.encoder_settings(codec, 18, "ultrafast", w, h, timing.rate),
                            timing=timing, colorspace=1)


def test_frame_encoder_writes_every_frame_and_reports_its_failure(tmp_path: Path) -> None:
    """The encoder stage on its own (what a video segment on a cluster worker encodes with)."""
    frames = [np.full((48, 64, 3), 40 * index, np.uint8) for index in range(5)]
    with stages.FrameEncoder(_encode_job(tmp_path / "out.mp4")) as encoder:
        for index, image in enumerate(frames):
            encoder.write(image, index, 1)
    assert encoder.frames == 5
    with av.open(str(tmp_path / "out.mp4")) as container:
        decoded = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    assert [round(float(np.median(d)) / 40) for d in decoded] == [0, 1, 2, 3, 4]  # the frames, in order

    with pytest.raises((av.FFmpegError, OSError)):  # the encoder thread cannot open its file: the writer hears it
        with stages.FrameEncoder(_encode_job(tmp_path / "missing" / "out.mp4")) as encoder:
            for index in range(100):
                encoder.write(frames[0], index, 1)
    assert video_threads() == []
