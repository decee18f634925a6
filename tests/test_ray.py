"""Cluster jobs on a local Ray instance: the same bytes as one machine, resuming, failures, URLs, video segments.

One Ray instance for the module (2 CPUs, no dashboard, shut down at the end) runs the library's jobs
with the 64 px network of ``test_pipeline`` and its fake detector finding one face (workers build it
from :class:`SmallRecipe`, so they import this folder: it is on their ``PYTHONPATH``). One command line
run with ``--ray local`` (aligned faces, grouped in chunks as on one machine) joins that instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
import pytest
import torch

from codeformer.jobs.loop import describe_failure
from codeformer.cli import restore_main
from codeformer.jobs import list_pictures
from codeformer.jobs.ray import restore_pictures_on_ray, restore_video_on_ray
from codeformer.jobs.storage import Folder
from codeformer.jobs.ray.ledger import REPORT_NAME
from codeformer.jobs.ray.session import Workers, init_local_ray
from codeformer.precision import SINGLE_ARENA_ENV
from codeformer.jobs.ray.video import FrameIndex, index_frames, plan_segments
from codeformer.jobs.local import restore_picture_files, restore_video_file
from codeformer.jobs.report import REPORT_NAME as FACE_REPORT_NAME, FaceReport
from ray_recipe import SmallRecipe
from test_pipeline import picture
from video_factory import make_clip

ray = pytest.importorskip("ray")
# Ray Data's own context warns about its deprecated settings whenever it is copied to a worker.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TWO_WORKERS = Workers(count=2, cpus=1, gpus=0)  # one torch thread each: the reference runs with one too


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch's float sums depend on its thread count; the reference runs as the workers do, on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Ray's processes inherit this environment: workers import the tests' helpers (a runtime_env would cost
    # a second per worker start). The job's runtime_env is the one the actor pool asks for (as ray_session
    # sets it), so Ray's ready workers serve the actors.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]))
        # Ray starts its workers at nice 15: beside the suite's other worker process (pytest-xdist) they would
        # get the cores only when it waits, and these tests would take three times as long.
        patch.setenv("RAY_worker_niceness", "0")
        listening_before = _listening_sockets()
        init_local_ray(num_cpus=2, log_to_driver=False, runtime_env={"env_vars": dict(SINGLE_ARENA_ENV)})
    try:
        opened = _listening_sockets() - listening_before
        assert opened, "no Ray server found in /proc/net/tcp*"
        assert {address for address, _ in opened} <= LOOPBACK, f"Ray listens beyond this machine: {sorted(opened)}"
        yield
    finally:
        ray.shutdown()


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # as /proc writes them


def _listening_sockets() -> set[tuple[str, str]]:
    """(address, port) in /proc's hex of every listening TCP socket of this machine, IPv4 and IPv6."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A":  # TCP_LISTEN
                    sockets.add(tuple(local.split(":")))
    return sockets


def _save(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8-bit, 16-bit, RGBA, gray and JPEG pictures, two sharing a stem, a corrupt file and a text file."""
    folder = tmp_path_factory.mktemp("ray_pictures")
    _save(folder / "colour.png", picture(200, 160, seed=1))
    _save(folder / "deep.png", picture(180, 150, seed=2).astype(np.uint16) * 257 + 5)
    _save(folder / "alpha.png", np.dstack([picture(160, 160, seed=3), np.full((160, 160), 90, np.uint8)]))
    _save(folder / "same.jpg", picture(170, 140, seed=4))
    _save(folder / "same.png", cv2.cvtColor(picture(150, 150, seed=5), cv2.COLOR_BGR2GRAY))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    (folder / "notes.txt").write_text("not a picture")
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).astype(int)


def _report(folder: Path) -> dict[str, dict]:
    lines = (folder / REPORT_NAME).read_text(encoding="utf-8").splitlines()
    return {Path(entry["input"]).name: entry for entry in map(json.loads, lines)}


@pytest.fixture(scope="module")
def reference(pictures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-machine run of the same folder (one torch thread, as each worker)."""
    out = tmp_path_factory.mktemp("reference")
    inputs, _ = list_pictures(str(pictures))
    pipeline, options = SmallRecipe().build()
    with one_thread():
        restore_picture_files(pipeline, [Path(p) for p in inputs], out, options, suffix="r", extension="auto",
                              progress=False, report=FaceReport(out / FACE_REPORT_NAME))
    return out


@pytest.fixture(scope="module")
def ray_run(local_ray: None, pictures: Path, reference: Path, tmp_path_factory: pytest.TempPathFactory):
    """The folder through Ray, given as file:// URLs, into a folder where colour.png's results already are."""
    out = tmp_path_factory.mktemp("ray_out")
    finished = {name: data for name, data in _tree(reference).items() if name.startswith(("final_results/colour",
                                                                                           "restored_faces/colour",
                                                                                           "cropped_faces/colour"))}
    for name, data in finished.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    kept = {name: (out / name).stat().st_mtime_ns for name in finished}
    inputs, not_read = list_pictures(pictures.as_uri())
    report = restore_pictures_on_ray(SmallRecipe(), inputs, out.as_uri(), suffix="r", extension="auto",
                                     workers=TWO_WORKERS, not_read=not_read, progress=False, report_faces=True)
    return report, out, kept


def test_pictures_are_byte_identical_to_the_single_machine_run(ray_run, reference: Path) -> None:
    report, out, _ = ray_run
    ray_files = _tree(out)
    del ray_files[REPORT_NAME]
    expected = _tree(reference)
    # The face report lists the pictures in input order, as one machine writes it; colour.png was done before.
    ray_faces = json.loads(ray_files.pop(FACE_REPORT_NAME))["inputs"]
    expected_faces = json.loads(expected.pop(FACE_REPORT_NAME))["inputs"]
    del expected_faces["colour.png"]
    assert list(ray_faces) == list(expected_faces) and ray_faces == expected_faces
    assert [len(entry["faces"]) for entry in ray_faces.values()] == [1] * 4
    assert sorted(ray_files) == sorted(expected)
    assert "final_results/same_jpg_r.jpg" in ray_files and "final_results/deep_r.png" in ray_files
    assert "restored_faces/alpha_00_r.png" in ray_files and "cropped_faces/alpha_00.png" in ray_files
    assert [name for name in expected if ray_files[name] != expected[name]] == []
    assert (report.done, report.skipped, report.failed) == (4, 1, 1)


def test_file_urls_work_and_finished_inputs_are_skipped(ray_run, pictures: Path) -> None:
    report, out, kept = ray_run
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # not written again
    statuses = {name: entry["status"] for name, entry in _report(out).items()}
    assert statuses["colour.png"] == "skipped" and statuses["deep.png"] == "done"
    inputs, _ = list_pictures(pictures.as_uri())  # file:// is this machine's disk: read as local files
    assert sorted(Path(location).name for location in inputs) == sorted(
        p.name for p in pictures.iterdir() if p.suffix != ".txt")


def test_a_corrupt_file_is_reported_and_fails_the_exit_code(ray_run) -> None:
    report, out, _ = ray_run
    assert report.exit_code == 1
    assert len(report.notes) == 1 and "corrupt.png" in report.notes[0] and "not a readable picture" in report.notes[0]
    entries = _report(out)
    assert entries["corrupt.png"]["status"] == "failed" and "not a readable picture" in entries["corrupt.png"]["error"]
    assert entries["notes.txt"]["status"] == "not_read"
    assert {entries[name]["status"] for name in ("deep.png", "alpha.png", "same.jpg", "same.png")} == {"done"}
    assert entries["deep.png"]["output"] == str(out / "final_results" / "deep_r.png")


def test_resume_schedules_nothing_when_every_result_exists(ray_run, pictures: Path, monkeypatch) -> None:
    _, out, _ = ray_run
    before = _tree(out)

    def no_scheduling(*args, **kwargs):
        raise AssertionError("work was scheduled")

    monkeypatch.setattr("codeformer.jobs.ray.pictures.run_dataset", no_scheduling)
    inputs, _ = list_pictures(str(pictures))
    report = restore_pictures_on_ray(SmallRecipe(), [p for p in inputs if "corrupt" not in p], str(out), suffix="r",
                                     extension="auto", workers=TWO_WORKERS, progress=False)
    assert (report.done, report.skipped, report.failed) == (0, 5, 0)
    assert {entry["status"] for entry in _report(out).values()} == {"skipped"}
    after = _tree(out)
    assert {name: data for name, data in after.items() if name != REPORT_NAME} == \
        {name: data for name, data in before.items() if name != REPORT_NAME}


def test_ray_missing_is_one_line_that_says_what_to_install(pictures: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    from codeformer.cli import colorize_main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    assert colorize_main(["-i", str(pictures), "-o", str(tmp_path / "out"), "--ray", "local"]) == 1
    err = capsys.readouterr().err
    assert 'pip install "ray[data]"' in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_read_stage_returns_bytes_or_the_line_that_says_why_not(pictures: Path, tmp_path: Path) -> None:
    """Ray Data's read stage, on its own: a file gone since listing is a failure line, not a lost chunk."""
    from codeformer.jobs.ray.pictures import PictureJob, _Item, _read_chunk

    present = str(pictures / "colour.png")
    items = (_Item(present, "a", "a.png"), _Item(str(tmp_path / "gone.png"), "gone", "gone.png"))
    job = PictureJob(SmallRecipe(), items, Folder(str(tmp_path)), False, None, 1, describe_failure)
    row = _read_chunk({"items": [0, 1]}, job)
    assert row["items"] == [0, 1] and row["data"][0] == Path(present).read_bytes() and row["data"][1] == b""
    assert row["read_error"][0] == "" and row["read_error"][1].startswith(f"{tmp_path / 'gone.png'}: cannot read")


@pytest.mark.parametrize(("resources", "count", "cpus", "device", "expected"), [
    ({"CPU": 16, "memory": 64 * 2**30}, None, None, "auto", Workers(16, 1, 0)),  # one per CPU
    ({"CPU": 64, "memory": 64 * 2**30}, None, None, "auto", Workers(21, 1, 0)),  # as many as memory holds
    ({"CPU": 64, "memory": 64 * 2**30}, 40, None, "auto", Workers(40, 1, 0)),  # asked for: as asked
    ({"CPU": 16, "memory": 64 * 2**30}, None, 4, "auto", Workers(4, 4, 0)),
    ({"CPU": 16, "GPU": 2, "memory": 64 * 2**30}, None, None, "auto", Workers(2, 1, 1)),  # one per GPU
    ({"CPU": 16, "GPU": 2, "memory": 64 * 2**30}, None, None, "cpu", Workers(16, 1, 0)),
    ({"CPU": 2, "memory": 2**30}, None, None, "auto", Workers(1, 1, 0)),  # never none
])
def test_the_default_pool_fits_the_cluster(resources, count, cpus, device, expected, monkeypatch) -> None:
    from codeformer.jobs.ray.session import plan_workers

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    assert plan_workers(count, cpus, device=device) == expected


def test_workers_larger_than_the_cluster_are_refused(monkeypatch) -> None:
    from codeformer.jobs.ray.session import plan_workers
    from codeformer.errors import CodeFormerError

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2, "memory": 2**34})
    with pytest.raises(CodeFormerError, match="each worker asks for 4 CPUs; the Ray cluster has 2"):
        plan_workers(None, 4)
    with pytest.raises(CodeFormerError, match="has no GPU"):
        plan_workers(None, None, device="cuda")


def test_storage_on_a_non_local_file_system_writes_atomically() -> None:
    fsspec = pytest.importorskip("fsspec")
    folder = Folder("memory://ray-test/out")
    folder.write_bytes("final_results/a.png", b"data")
    assert folder.names("final_results") == {"a.png"} and folder.exists("final_results/a.png")
    assert folder.read_bytes("final_results/a.png") == b"data"
    listed = fsspec.filesystem("memory").ls("/ray-test/out/final_results", detail=False)
    assert listed == ["/ray-test/out/final_results/a.png"]  # the temporary name is gone
    assert folder.names("missing") == set()
    folder.remove("final_results/a.png")
    assert not folder.exists("final_results/a.png")


# --------------------------------------------------------------------------------------------- video


def test_segments_start_at_keyframes_and_cover_every_frame_once() -> None:
    index = FrameIndex(tuple(range(0, 400, 4)), (0, 30, 45, 60, 90))
    segments = plan_segments(index, 3, overlap=5)
    assert [(s.start, s.end) for s in segments] == [(0, 30), (30, 60), (60, 100)]
    assert [(s.context_start, s.context_end) for s in segments] == [(0, 35), (25, 65), (55, 100)]
    assert [s.seek_pts for s in segments] == [None, 0, 180]  # the keyframe at or before the context
    assert segments[1].pts == index.pts[25:65]
    assert len(plan_segments(FrameIndex(index.pts, (0,)), 4)) == 1  # one keyframe: nothing to cut at


@pytest.fixture(scope="module")
def keyframed_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 frames at 25 fps with AAC audio and a keyframe every 4 frames."""
    import video_factory

    path = tmp_path_factory.mktemp("ray_video") / "clip.mp4"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(video_factory._VIDEO_OPTIONS, "libx264", {"crf": "12", "preset": "veryfast", "g": "4",
                                                               "keyint_min": "4", "sc_threshold": "0"})
        make_clip(path, frames=8, fps=25, size=(96, 80), audio="aac")
    return path


def _frame_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.pts * stream.time_base for frame in container.decode(stream)]


def _audio_packets(path: Path) -> list[tuple[int, bytes]]:
    with av.open(str(path)) as container:
        return [(packet.pts, bytes(packet)) for packet in container.demux(container.streams.audio[0]) if packet.size]


def test_video_in_two_segments_keeps_frames_timing_audio_report_and_frames(local_ray: None, keyframed_clip: Path,
                                                                          tmp_path: Path) -> None:
    index = index_frames(keyframed_clip, 0)
    assert index is not None and len(index.pts) == 8 and index.keyframes == (0, 4)
    single = tmp_path / "single"
    pipeline, options = SmallRecipe().build()
    with one_thread():
        restore_video_file(pipeline, keyframed_clip, single, options, save_frames=True, progress=False,
                           report=FaceReport(single / FACE_REPORT_NAME))
    out = tmp_path / "ray"
    # Two frames of context (the default, 7, would make each worker restore the whole short clip).
    result = restore_video_on_ray(SmallRecipe(), str(keyframed_clip), str(out), segments=2, workers=TWO_WORKERS,
                                  overlap=2, progress=False, report_faces=True, save_frames=True)
    assert result == str(out / "clip.mp4")
    # The segment files are removed; the per-frame folders and the face report are the single machine's.
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in single.iterdir()), REPORT_NAME])
    entry = _report(out)["clip.mp4"]
    assert (entry["status"], entry["segments"], entry["frames"]) == ("done", 2, 8)
    faces = json.loads((out / FACE_REPORT_NAME).read_text())
    assert [frame["frame"] for frame in faces["inputs"]["clip.mp4"]["frames"]] == list(range(8))
    assert faces == json.loads((single / FACE_REPORT_NAME).read_text())
    saved = {name: data for name, data in _tree(out).items() if "/" in name}
    assert len(saved) == 8 * 3 and "final_results/000007.png" in saved
    alone = {name: data for name, data in _tree(single).items() if "/" in name}
    assert sorted(saved) == sorted(alone)
    # Faces go through the network in other groups at a seam: equal up to float rounding.
    assert max(np.abs(_decoded(saved[name]) - _decoded(alone[name])).max() for name in saved) <= 2
    assert _frame_times(out / "clip.mp4") == _frame_times(single / "clip.mp4")
    assert _audio_packets(out / "clip.mp4") == _audio_packets(single / "clip.mp4")
    with av.open(str(out / "clip.mp4")) as joined, av.open(str(single / "clip.mp4")) as alone:
        assert joined.streams.video[0].duration * joined.streams.video[0].time_base == \
            alone.streams.video[0].duration * alone.streams.video[0].time_base
        frames = [frame.to_ndarray(format="bgr24") for frame in joined.decode(video=0)]
        expected = [frame.to_ndarray(format="bgr24") for frame in alone.decode(video=0)]
    assert frames[0].shape == (160, 192, 3)
    # Restored from the same context, encoded afresh from each seam: the same pictures up to the codec.
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, expected)) < 4.0
    # Resuming: the result is there, nothing is scheduled.
    assert restore_video_on_ray(SmallRecipe(), str(keyframed_clip), str(out), segments=2, workers=TWO_WORKERS,
                                progress=False) is None


# --------------------------------------------------------------------------------------- command line


def test_command_line_with_ray_matches_the_plain_command(local_ray: None, tmp_path: Path,
                                                         small_restoration_weights: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    """``--ray`` end to end through the command line (on this module's Ray instance, which the command joins
    and leaves running) against the plain command: the same files and exit code. Aligned faces, the small
    CodeFormer: real restored faces without a detector, grouped by ``--batch_size`` as on one machine (a face's
    bytes depend on its chunk: 4 faces, chunks of 3 and 1)."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for index in range(4):
        _save(folder / f"face{index}.png", picture(128, 128, seed=10 + index))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    common = ["-i", str(folder), "--has_aligned", "--batch_size", "3", "--weights_dir", str(small_restoration_weights),
              "--device", "cpu", "-q"]
    clustered = restore_main([*common, "-o", str(tmp_path / "ray"), "--ray", "local", "--ray_workers", "1"])
    err = capfd.readouterr().err
    with one_thread():  # as the worker: its one CPU is one torch thread
        plain = restore_main([*common, "-o", str(tmp_path / "plain")])
    assert plain == clustered == 1, err  # the corrupt file
    assert "Traceback" not in err and "corrupt.png" in err and "not a readable picture" in err
    produced = _tree(tmp_path / "ray")
    assert [entry["status"] for entry in map(json.loads, produced.pop(REPORT_NAME).splitlines())].count("done") == 4
    expected = _tree(tmp_path / "plain")
    assert sorted(produced) == sorted(expected) and len(produced) == 4
    assert [name for name in expected if produced[name] != expected[name]] == []
