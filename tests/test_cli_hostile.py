"""Hostile inputs through the command line and the pipeline: one line each, bounded memory, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codeformer.cli import restore_main
from codeformer.imageio import write_image
from test_hostile_inputs import BOMB_SIDE, png_bomb

REPO = Path(__file__).resolve().parents[1]
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")

# In a child process with its address space capped at what its imports (and the small network) take
# plus this: a 51200 x 51200 canvas (7.9 GB) cannot be built, an 800 x 800 one easily can.
HEADROOM = int(1.5 * 2**30)
# One child (an interpreter importing torch, a network) restores the tiny picture at each upscale given and
# reports each outcome on its own: {"shape": [...]}, {"refused": CodeFormerError's message} or {"failed": ...}.
# Its pipeline is test_pipeline's small one, the network read from the small checkpoint (quicker than making it).
_CHILD = """
import json, resource, sys
sys.path.insert(0, "tests")
import numpy as np
from test_pipeline import FakeDetector
from codeformer.errors import CodeFormerError
from codeformer.pipeline import Pipeline
from codeformer.registry import model_spec
from codeformer.restorer import FaceRestorer

restorer = FaceRestorer.from_file(sys.argv[2], "cpu")
pipe = Pipeline(model_spec("codeformer", "restorer"), restorer, detector=FakeDetector())
with open("/proc/self/status") as status:
    used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (used + int(sys.argv[1]),) * 2)
image = np.full((8, 8, 3), 128, np.uint8)
outcomes = {}
for upscale in sys.argv[3:]:
    try:
        outcomes[upscale] = {"shape": list(pipe.restore(image, upscale=int(upscale)).image.shape)}
    except CodeFormerError as error:
        outcomes[upscale] = {"refused": str(error)}
    except Exception as error:  # a MemoryError above all: the canvas was built at the working size
        outcomes[upscale] = {"failed": repr(error)}
print(json.dumps(outcomes))
"""
HUGE_SCALE = 100  # 8x8 -> 800x800: the working copy is 512x512, its x100 canvas would be 51200x51200
OVER_THE_LIMIT = 2000  # 16000 x 16000 = 256 megapixels


@pytest.fixture(scope="module")
def capped_child(small_restoration_weights: Path) -> dict[str, dict]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    network = small_restoration_weights / "CodeFormer" / "codeformer.pth"
    child = subprocess.run([sys.executable, "-c", _CHILD, str(HEADROOM), str(network), str(HUGE_SCALE),
                            str(OVER_THE_LIMIT)], cwd=REPO, env=environment, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout)


@needs_linux
def test_a_huge_scale_on_a_tiny_picture_builds_only_the_output_canvas(capped_child: dict[str, dict]) -> None:
    assert capped_child[str(HUGE_SCALE)] == {"shape": [800, 800, 3]}


@needs_linux
def test_an_output_over_the_pixel_limit_is_refused_with_its_size(capped_child: dict[str, dict]) -> None:
    assert capped_child[str(OVER_THE_LIMIT)] == {
        "refused": "an output of 16000x16000 pixels (256.0 megapixels) is over the limit of 150 megapixels; use a "
                   "smaller scale, or raise the limit with max_pixels"}


# ------------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good aligned faces and every kind of entry that is not one."""
    folder = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    for name in ("a.png", "-dash.png"):
        write_image(folder / name, rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    (folder / "bomb.png").write_bytes(png_bomb(BOMB_SIDE, BOMB_SIDE))
    (folder / "anim.gif").write_bytes(b"GIF89a" + bytes(20))
    (folder / "notes.txt").write_text("not a picture")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.png").symlink_to(folder / "missing.png")
    (folder / "sub").mkdir()
    (folder / ".hidden.png").write_bytes(b"")
    return folder


def test_a_hostile_folder_is_accounted_for_file_by_file(hostile_folder: Path, small_restoration_weights: Path,
                                                        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = restore_main(["--has_aligned", "-i", str(hostile_folder), "-o", str(out), "--weights_dir",
                         str(small_restoration_weights), "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert sorted(p.name for p in (out / "restored_faces").iterdir()) == ["-dash.png", "a.png"]
    assert ("bomb.png: 30000x30000 pixels (900.0 megapixels) is over the limit of 150 megapixels; raise it with "
            "--max_pixels if you trust this file") in err
    for name, reason in (("anim.gif", "not a picture this command reads (.gif)"), ("loop.png", "symlink loop"),
                         ("dangling.png", "broken link"), ("sub", "a folder (not searched)"),
                         ("notes.txt", "not a picture this command reads (.txt)")):
        assert f"skipped {name}: {reason}" in err
    # 9 entries that are not hidden: 2 restored, 1 failed (the bomb), 5 skipped with their reasons.
    assert "restored 2, skipped 5, failed 1" in err


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.symlink_to(p), "symlink loop"),
    (lambda p: p.symlink_to(p.parent / "nowhere.png"), "broken link"),
    (lambda p: None, "does not exist"),
])
def test_a_bad_input_path_is_one_line(make, message: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "input.png"
    make(path)
    assert restore_main(["-i", str(path), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capfd.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_file_named_with_a_leading_dash(small_restoration_weights: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "-x.png", np.zeros((512, 512, 3), np.uint8))
    assert restore_main(["--has_aligned", "-i", "-x.png", "-o", "out", "--weights_dir", str(small_restoration_weights),
                         "--device", "cpu", "-q"]) == 0
    assert (tmp_path / "out" / "restored_faces" / "-x.png").is_file()


def test_failed_runs_leave_no_empty_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CODEFORMER_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # offline: the download fails
    write_image(tmp_path / "face.png", np.zeros((512, 512, 3), np.uint8))
    assert restore_main(["--has_aligned", "-i", "face.png", "--weights_dir", "weights", "--device", "cpu", "-q"]) == 1
    assert "1 pretrained file is missing and cannot be downloaded here" in capfd.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]  # no results/..., no weights/CodeFormer/
    from codeformer.cli import vqgan_main

    assert vqgan_main(["-i", "face.png", "--weights_dir", "weights", "--device", "cpu", "-q"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]  # no results/vqgan_rec


def test_rates_read_right_at_any_speed() -> None:
    from codeformer.jobs.local import describe_rate

    assert describe_rate(3, 480.0) == "160.0 s/frame"  # was "0.0 frames/s"
    assert describe_rate(30, 2.0) == "15.0 frames/s"
    assert describe_rate(0, 1.0) == "no frames"


def _wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# Faces of the killed run: killed once the first is written, the others give the kill a wide margin to land
# before the last one is done, even though each takes the small network a fraction of a second.
KILLED_RUN_FACES = 5


@needs_linux
def test_a_killed_folder_run_leaves_complete_outputs_and_resumes(small_restoration_weights: Path,
                                                                 tmp_path: Path) -> None:
    """The small CodeFormer, on faces at its own size: what a kill leaves and what a rerun redoes do not depend on
    the network's size (the command on official-size aligned faces: test_cli_aligned)."""
    from checkpoint_factory import SMALL_CONFIG

    from codeformer.imageio import read_image

    side = round(SMALL_CONFIG.latent_size**0.5) * 32  # the network's crop side (32 pixels per latent position)
    folder = tmp_path / "faces"
    rng = np.random.default_rng(1)
    for index in range(KILLED_RUN_FACES):
        write_image(folder / f"{index}.png", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    out = tmp_path / "out"
    arguments = ["--has_aligned", "-i", str(folder), "-o", str(out), "--weights_dir", str(small_restoration_weights),
                 "--device", "cpu", "--batch_size", "1", "-q"]
    process = subprocess.Popen([sys.executable, "inference_codeformer.py", *arguments], cwd=REPO,
                               stderr=subprocess.PIPE, text=True)
    faces = out / "restored_faces"
    try:
        _wait_for(lambda: faces.is_dir() and any(not p.name.startswith(".") for p in faces.iterdir()), process)
    finally:
        process.kill()  # SIGKILL: no chance to clean up
        process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in faces.iterdir() if not p.name.startswith(".")}
    assert 1 <= len(finished) < KILLED_RUN_FACES  # killed mid-run
    for name in finished:
        assert read_image(faces / name).width == side  # complete and decodable under its final name
    # The rerun in this process: the same command (the script only calls restore_main), one interpreter start less.
    assert restore_main([*arguments, "--skip_existing"]) == 0
    done = sorted(p.name for p in faces.iterdir() if not p.name.startswith("."))
    assert done == [f"{index}.png" for index in range(KILLED_RUN_FACES)]
    assert all((faces / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())  # not redone


@needs_linux
def test_ctrl_c_during_a_video_leaves_no_partial_file(small_restoration_weights: Path, tmp_path: Path,
                                                      astronaut_bgr: np.ndarray) -> None:
    import signal
    import time

    from video_factory import ctrl_c_acts, make_clip

    clip = make_clip(tmp_path / "clip.mp4", frames=12, size=(256, 256), audio="aac", image=astronaut_bgr)
    out = tmp_path / "out"
    command = [sys.executable, "inference_codeformer.py", "-i", str(clip), "-o", str(out), "--weights_dir",
               str(small_restoration_weights), "--detection_model", "dlib", "--device", "cpu", "-q"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_acts)
    try:
        # The output folder appears when the video stages start: decoding, restoring and encoding are under way.
        _wait_for(out.is_dir, process)
        time.sleep(2.0)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []
