"""Detection beside restoration: a detector in a process of its own, loads ahead, frames detected ahead.

The outputs of a folder or a video must be exactly those of one picture (one frame) at a time; only
when the work happens changes. The stand-in detector here finds one face and notes which process
ran it; it is sent to the child process pickled, so the child imports this module (its folder is on
the child's PYTHONPATH).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from codeformer.errors import CodeFormerError
from codeformer.face.detection import DetectedFace, check_bgr_image
from codeformer.face.detection_process import DetectionProcess, runs_apart
from codeformer.imageio import MemoryLimitError
from codeformer.jobs.local import restore_picture_files, restore_video_file
from codeformer.jobs.loop import Batch, run_batch
from codeformer.restoration import Models
from codeformer.temporal import TemporalFaceRestorer
from checkpoint_factory import TINY_CONFIG
from test_pipeline import FakeDetector, picture, small_pipeline
from video_factory import make_clip

TESTS = Path(__file__).resolve().parent
ONE_FACE = ((0.5, 0.45),)
APART_PROCESSES = min(2, os.cpu_count() or 1)  # what Pipeline.detecting_apart starts for a job of several pictures


class ApartDetector(FakeDetector):
    """The fake one-face detector, to be run in a process of its own; it notes each process it detects in."""

    prefers_own_process = True

    def __init__(self, seen: Path) -> None:
        super().__init__(ONE_FACE)
        self.seen = seen

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        check_bgr_image(image)  # as every detector does: a bad picture is an error raised in the child
        (self.seen / str(os.getpid())).touch()
        return super().detect(image)


def _processes(seen: Path) -> set[int]:
    return {int(p.name) for p in seen.iterdir()}


@pytest.fixture(autouse=True)
def _child_imports_this_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def _save(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_process_answers_as_the_detector_and_says_when_it_stopped(tmp_path: Path) -> None:
    detector = ApartDetector(tmp_path)
    image = picture(300, 200, seed=4)
    with DetectionProcess(detector) as apart:
        assert (apart.name, apart.template_name) == ("fake", "ffhq")  # the detector's description
        faces = apart.detect(image)
        expected = detector.detect(image)
        assert [(f.box.tolist(), f.score, f.landmarks.tolist()) for f in faces] == \
            [(f.box.tolist(), f.score, f.landmarks.tolist()) for f in expected]
        assert _processes(tmp_path) - {os.getpid()}, "no detection ran in another process"
        with pytest.raises(ValueError, match=r"expected a \(H, W, 3\) BGR uint8 picture"):
            apart.detect(image[:, :, 0])  # the child's error, raised here
        assert len(apart.detect(image)) == 1  # and the child goes on
        child = apart._children[0].process
        child.kill()
        child.wait()
        with pytest.raises(CodeFormerError, match=r"^the fake detection process stopped \(exit code -9\): out of memory\? "
                                                  r"Free memory or choose another face detector$"):
            apart.detect(image)
    assert child.poll() is not None


class MeetingDetector(ApartDetector):
    """Detects only once another process is detecting too: two children that do not run at once fail.
    Each call's process is also written, in order, to ``calls`` (a file beside ``seen``)."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        (self.seen / str(os.getpid())).touch()
        with open(self.seen.parent / "calls", "a") as calls:
            calls.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + 30
        while len(_processes(self.seen)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("no other process detected meanwhile")
            time.sleep(0.01)
        return super().detect(image)


def test_two_processes_detect_two_pictures_at_once_and_take_turns(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    images = [picture(300, 200, seed=4), picture(200, 300, seed=5)]
    expected = [FakeDetector(ONE_FACE).detect(image) for image in images]
    with DetectionProcess(MeetingDetector(seen), processes=2) as apart, ThreadPoolExecutor(2) as threads:
        assert apart.processes == 2
        found = list(threads.map(apart.detect, images))  # each waits until the other process detects too
        for _ in range(4):  # one caller alone: the children take turns (first in, first out)
            apart.detect(images[0])
    assert len(_processes(seen) - {os.getpid()}) == 2
    assert [[f.box.tolist() for f in faces] for faces in found] == [[f.box.tolist() for f in faces] for faces in expected]
    alone = (tmp_path / "calls").read_text().split()[2:]
    assert len(alone) == 4 and all(a != b for a, b in zip(alone, alone[1:]))  # never the same child twice in a row
    assert all(child.process.poll() is not None for child in apart._children)  # closed with the block


class EndlessDetector(ApartDetector):
    """Notes that it started, then detects for ten minutes."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        (self.seen / "started").touch()
        time.sleep(600)
        return super().detect(image)


def test_leaving_on_ctrl_c_kills_a_detection_under_way_at_once(tmp_path: Path, monkeypatch) -> None:
    """A job left by Ctrl-C or an error does not wait for the child's answer (a dlib picture takes seconds)."""
    from codeformer.face import detection_process

    monkeypatch.setattr(detection_process, "STOP_TIMEOUT_S", 600.0)  # were the child waited for, this would hang
    failures: list[BaseException] = []

    def detect(apart: DetectionProcess) -> None:
        try:
            apart.detect(picture(300, 200, seed=4))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            failures.append(error)

    with pytest.raises(KeyboardInterrupt):
        with DetectionProcess(EndlessDetector(tmp_path)) as apart:
            caller = threading.Thread(target=detect, args=(apart,))
            caller.start()
            deadline = time.monotonic() + 60
            while not (tmp_path / "started").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (tmp_path / "started").exists()
            raise KeyboardInterrupt
    caller.join(timeout=60)
    assert not caller.is_alive()
    assert apart._children[0].process.returncode == -9  # killed, not waited for
    assert len(failures) == 1 and "detection process stopped" in str(failures[0])


def test_a_detector_that_cannot_be_sent_fails_before_a_process_starts() -> None:
    class Local(FakeDetector):  # defined in a function: pickle cannot name it
        pass

    with pytest.raises((AttributeError, pickle.PicklingError), match="Local"):
        DetectionProcess(Local())
    assert not runs_apart(FakeDetector()) and runs_apart(ApartDetector(Path(".")))


@pytest.mark.skipif(not __import__("importlib").util.find_spec("dlib"), reason="needs dlib")
def test_dlib_apart_finds_the_same_faces(astronaut_bgr: np.ndarray) -> None:
    from codeformer.registry import load_detector

    detector = load_detector("dlib", device="cpu")
    half = cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA)  # a quarter of dlib's time
    with DetectionProcess(detector) as apart:
        faces = apart.detect(half)
    expected = detector.detect(half)
    assert len(faces) == 1
    assert [(f.box.tolist(), f.score, f.landmarks.tolist()) for f in faces] == \
        [(f.box.tolist(), f.score, f.landmarks.tolist()) for f in expected]


def test_a_folder_detected_apart_equals_one_picture_at_a_time(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index, (width, height) in enumerate([(320, 240), (200, 260), (256, 256)]):
        _save(folder / f"p{index}.png", picture(width, height, seed=20 + index))
    (folder / "p1b.png").write_bytes(b"not a picture")
    inputs = sorted(folder.iterdir())
    seen = tmp_path / "seen"
    seen.mkdir()
    pipeline = small_pipeline(ApartDetector(seen), TINY_CONFIG)
    options = pipeline.options(upscale=2)
    together = restore_picture_files(pipeline, inputs, tmp_path / "together", options, progress=False)
    assert pipeline.detector.__class__ is ApartDetector  # the processes are gone with the job
    # every picture detected apart, two at once where there are two cores (the children take turns)
    assert os.getpid() not in _processes(seen) and len(_processes(seen)) == APART_PROCESSES
    alone = tmp_path / "alone"
    for path in inputs:  # one input per job: detected in this process, nothing ahead
        restore_picture_files(pipeline, [path], alone, options, progress=False)
    assert os.getpid() in _processes(seen)
    assert (together.done, together.failed) == (3, 1) and "p1b.png" in together.notes[0]
    produced = _tree(tmp_path / "together")
    assert len(produced) == 9 and produced == _tree(alone)


def test_loads_ahead_keep_order_failures_skips_and_retry_memory_refusals_in_turn() -> None:
    calls: list[tuple[str, bool]] = []  # (input, loaded in a helper thread)
    b_started = threading.Event()

    def load(path: Path) -> str:
        ahead = threading.current_thread() is not threading.main_thread()
        calls.append((path.name, ahead))
        if path.name == "a":
            assert b_started.wait(30), "the next input did not load beside the first"
        if path.name == "bad":
            b_started.set()
            raise CodeFormerError("bad: not a picture")
        if path.name == "big" and ahead:
            raise MemoryLimitError("restoring", 100, 100, 2**30, 2**20, "free memory")
        return path.name

    processed: list[str] = []
    saved: list[str] = []
    batch = Batch(load=load, process=lambda items: processed.extend(items) or list(items),
                  save=lambda path, result: saved.append(result), is_done=lambda path: path.name == "done",
                  load_ahead=2, retry_in_turn=lambda error: isinstance(error, MemoryLimitError))
    names = ["a", "bad", "done", "big", "c"]
    report = run_batch([Path(name) for name in names], batch, progress=False)
    assert (report.done, report.skipped, report.failed) == (3, 1, 1) and report.notes == ["bad: not a picture"]
    assert processed == saved == ["a", "big", "c"]  # in input order
    assert ("a", True) in calls and ("c", True) in calls  # loaded ahead, two at once ("a" waited for "bad")
    assert [ahead for name, ahead in calls if name == "big"] == [True, False]  # refused ahead, then in turn


def test_loads_ahead_hold_at_most_that_many_inputs_beyond_the_one_processed() -> None:
    started: list[str] = []
    processed: list[str] = []
    most_held = 0
    lock = threading.Lock()

    def load(path: Path) -> str:
        nonlocal most_held
        with lock:
            started.append(path.name)
            most_held = max(most_held, len(started) - len(processed))
        time.sleep(0.01)
        return path.name

    def process(items: list[str]) -> list[str]:
        time.sleep(0.02)
        with lock:
            processed.extend(items)
        return items

    names = [f"p{index}" for index in range(8)]
    batch = Batch(load=load, process=process, save=lambda path, result: None, load_ahead=2)
    assert run_batch([Path(name) for name in names], batch, progress=False).done == 8
    assert processed == names and most_held <= 3  # the one in turn and two ahead, no more


def test_frames_detected_ahead_come_back_as_detected_in_turn() -> None:
    pipeline = small_pipeline(FakeDetector(ONE_FACE), TINY_CONFIG)
    options = pipeline.options(upscale=1)
    models = Models(pipeline.restorer, pipeline.detector, batch_size=1)
    frames = [np.roll(picture(160, 128, seed=3), 3 * index, axis=1) for index in range(5)]

    def run(ahead: bool) -> list[np.ndarray]:
        processor = TemporalFaceRestorer(models, options, window=3, max_gap=1, detect_ahead=ahead)
        out: list[np.ndarray] = []
        for frame in frames:
            out += processor.process([frame])
        return out + processor.flush()

    in_turn, ahead = run(False), run(True)
    assert len(ahead) == len(in_turn) == 5
    assert all(np.array_equal(a, b) for a, b in zip(ahead, in_turn))


def test_a_video_detected_apart_equals_the_video_detected_here(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=4, fps=10, size=(128, 96), audio=None)
    seen = tmp_path / "seen"
    seen.mkdir()
    apart_pipeline = small_pipeline(ApartDetector(seen), TINY_CONFIG)
    here_pipeline = small_pipeline(FakeDetector(ONE_FACE), TINY_CONFIG)
    here_pipeline.restorer = apart_pipeline.restorer
    outputs = {}
    for name, pipeline in (("apart", apart_pipeline), ("here", here_pipeline)):
        restore_video_file(pipeline, clip, tmp_path / name, pipeline.options(upscale=1), progress=False,
                           save_frames=True)
        outputs[name] = _tree(tmp_path / name / "final_results")
        assert len(outputs[name]) == 4
    assert os.getpid() not in _processes(seen) and len(_processes(seen)) == APART_PROCESSES
    assert outputs["apart"] == outputs["here"]
