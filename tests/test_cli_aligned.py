"""End to end: the aligned-face commands (restore --has_aligned, colorization, inpainting) on small folders."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from codeformer.cli import colorize_main, inpaint_main, restore_main
from codeformer.color import is_gray
from codeformer.imageio import read_image

REPO = Path(__file__).resolve().parents[1]
SMALL_FACE = 128  # the crop of the small CodeFormer (checkpoint_factory.SMALL_CONFIG)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _write(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory: pytest.TempPathFactory, astronaut_bgr: np.ndarray) -> Path:
    """Colour, gray, RGBA and non-ASCII-named faces, plus a file that is not a picture."""
    folder = tmp_path_factory.mktemp("faces")
    _write(folder / "colour.png", astronaut_bgr)
    gray = cv2.cvtColor(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    _write(folder / "gray.jpg", gray)
    rgba = np.dstack([astronaut_bgr, np.full(astronaut_bgr.shape[:2], 77, np.uint8)])
    _write(folder / "alpha.png", rgba)
    _write(folder / "宇航员.png", cv2.resize(astronaut_bgr, (300, 300)))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def restored_run(face_folder: Path, small_restoration_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """The folder through the small CodeFormer: the folder's handling does not depend on the network's size
    (the official-size aligned run: test_precision_auto_is_reported_and_fp16_on_cpu_refused below)."""
    out = tmp_path_factory.mktemp("restored")
    before = _digest(face_folder)
    code = restore_main(["--has_aligned", "-i", str(face_folder), "-o", str(out), "-w", "0.7",
                         "--weights_dir", str(small_restoration_weights), "--device", "cpu", "--suffix", "cf"])
    return code, out, before


def test_has_aligned_restores_each_readable_face(restored_run, face_folder: Path) -> None:
    code, out, before = restored_run
    assert code == 1  # one input failed
    written = sorted(p.name for p in (out / "restored_faces").iterdir())
    assert written == ["alpha_cf.png", "colour_cf.png", "gray_cf.png", "宇航员_cf.png"]
    for name in written:
        picture = read_image(out / "restored_faces" / name)
        assert (picture.height, picture.width) == (SMALL_FACE, SMALL_FACE)  # the network's crop
    assert _digest(face_folder) == before  # inputs untouched


def test_has_aligned_keeps_gray_and_alpha(restored_run) -> None:
    _, out, _ = restored_run
    faces = out / "restored_faces"
    assert is_gray(read_image(faces / "gray_cf.png").bgr)
    assert not is_gray(read_image(faces / "colour_cf.png").bgr)
    alpha = read_image(faces / "alpha_cf.png").alpha
    assert alpha is not None and np.all(alpha == 77)


def test_has_aligned_changes_the_face(restored_run, astronaut_bgr: np.ndarray) -> None:
    _, out, _ = restored_run
    restored = read_image(out / "restored_faces" / "colour_cf.png").bgr
    given = cv2.resize(astronaut_bgr, (SMALL_FACE, SMALL_FACE), interpolation=cv2.INTER_AREA)
    assert np.abs(restored.astype(int) - given.astype(int)).mean() > 1


def test_failure_is_one_line_without_traceback(face_folder: Path, restoration_weights: Path, tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    code = restore_main(["--has_aligned", "-i", str(face_folder / "broken.jpg"), "-o", str(tmp_path),
                         "--weights_dir", str(restoration_weights), "--device", "cpu", "-q"])
    err = capfd.readouterr().err
    assert code == 1
    assert "error: " in err and "broken.jpg" in err and "not a readable picture" in err
    assert "Traceback" not in err
    assert not (tmp_path / "restored_faces").exists() or not any((tmp_path / "restored_faces").iterdir())


def test_skip_existing_and_default_output_root(face_folder: Path, small_restoration_weights: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, astronaut_bgr: np.ndarray) -> None:
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / "my faces"
    inputs.mkdir()
    _write(inputs / "a.png", astronaut_bgr)
    _write(inputs / "b.png", astronaut_bgr[:, ::-1])
    done = tmp_path / "results" / "my faces_0.5" / "restored_faces"  # the reference's default name
    done.mkdir(parents=True)
    (done / "a.png").write_bytes(b"already here")
    code = restore_main(["--has_aligned", "-i", str(inputs) + "/", "--skip_existing",
                         "--weights_dir", str(small_restoration_weights), "--device", "cpu", "-q"])
    assert code == 0
    assert (done / "a.png").read_bytes() == b"already here"  # skipped, not redone
    assert read_image(done / "b.png").width == SMALL_FACE


@pytest.mark.parametrize("argv, message", [
    (["-w", "1.5"], "1.5 is outside [0, 1]; pick a value from 0 (quality) to 1 (fidelity)"),
    (["-w", "abc"], "expected a number"),
    (["--batch_size", "0"], "must be at least 1"),
    (["--detection_model"], "expected one argument"),
])
def test_bad_options_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        restore_main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_old_flag_spellings_still_work() -> None:
    from codeformer.cli import build_parser

    args = build_parser().parse_args(["restore", "--w", "0.3", "--test_path", "x", "--upscale", "3"])
    assert (args.command, args.fidelity_weight, args.input_path, args.upscale) == ("restore", 0.3, "x", 3)


def test_missing_input_path(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert restore_main(["--has_aligned", "-i", str(tmp_path / "nope"), "-q"]) == 1
    assert "input path" in capfd.readouterr().err


def test_offline_without_weights_names_url_and_path(tmp_path: Path, face_folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CODEFORMER_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # refused: same as no network
    code = restore_main(["--has_aligned", "-i", str(face_folder), "-o", str(tmp_path / "out"),
                         "--weights_dir", str(tmp_path / "w"), "--device", "cpu", "-q"])
    err = capfd.readouterr().err
    assert code == 1
    assert "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth" in err
    assert str(tmp_path / "w" / "CodeFormer" / "codeformer.pth") in err
    # One message: the missing file (the only one aligned faces need), and how to fetch it.
    assert "Traceback" not in err and err.startswith("error: 1 pretrained file is missing")
    assert err.strip().splitlines()[-1].startswith("fetch them on a machine with internet with")


def test_colorization_end_to_end(face_folder: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    """The command on a small colorization network in the official file's place and layout (the official size's
    layout is test_archs's; the folder's handling does not depend on the network's size)."""
    from dataclasses import replace

    from checkpoint_factory import SMALL_CONFIG, VARIANTS, write_small_codeformer_checkpoint

    weights = tmp_path_factory.mktemp("small_colorization")
    write_small_codeformer_checkpoint(weights / "CodeFormer" / "codeformer_colorization.pth",
                                      replace(SMALL_CONFIG, connect_list=VARIANTS["colorization"].connect_list))
    out = tmp_path / "out"
    code = colorize_main(["-i", str(face_folder), "-o", str(out), "--weights_dir", str(weights), "--device", "cpu",
                          "-q"])
    err = capfd.readouterr().err
    assert code == 1 and "broken.jpg" in err
    assert f"宇航员.png: 300x300 resized to {SMALL_FACE}x{SMALL_FACE}" in err
    outputs = sorted(p.name for p in out.iterdir())
    assert outputs == ["alpha.png", "colour.png", "gray.png", "宇航员.png"]
    colorized = read_image(out / "gray.png")
    assert colorized.bgr.shape == (SMALL_FACE, SMALL_FACE, 3) and colorized.source_channels == 3


def test_inpainting_keeps_unpainted_pixels_exactly(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                   astronaut_bgr: np.ndarray) -> None:
    """The command on a small inpainting network in the official file's place and layout (512 codes, no AdaIN;
    the official size's layout is test_archs's), fed crops of its own size so that no pixel is resampled."""
    from dataclasses import replace

    from checkpoint_factory import SMALL_CONFIG, VARIANTS, write_small_codeformer_checkpoint

    weights = tmp_path_factory.mktemp("small_inpainting")
    official = VARIANTS["inpainting"]
    write_small_codeformer_checkpoint(weights / "CodeFormer" / "codeformer_inpainting.pth",
                                      replace(SMALL_CONFIG, codebook_size=official.codebook_size,
                                              connect_list=official.connect_list))
    inputs = tmp_path / "in"
    inputs.mkdir()
    painted = cv2.resize(astronaut_bgr, (SMALL_FACE, SMALL_FACE), interpolation=cv2.INTER_AREA)
    cv2.line(painted, (38, 30), (82, 50), (255, 255, 255), 4)
    cv2.circle(painted, (64, 75), 7, (255, 255, 255), -1)
    _write(inputs / "masked.png", painted)
    (inputs / "notes.png").write_text("not a picture")
    out = tmp_path / "out"
    code = inpaint_main(["-i", str(inputs), "-o", str(out), "--weights_dir", str(weights),
                         "--device", "cpu", "--suffix", "fill", "-q"])
    assert code == 1  # notes.png failed, masked.png done
    result = read_image(out / "masked_fill.png").bgr
    hole = np.all(painted == 255, axis=2)
    assert hole.sum() > 250
    assert np.array_equal(result[~hole], painted[~hole])  # bit-exact outside the strokes
    assert np.abs(result[hole].astype(int) - 255).mean() > 5  # the strokes were filled


def test_entry_point_scripts_run(tmp_path: Path) -> None:
    """Each script runs from a checkout, from another folder (the work itself: the tests of each command), and
    its flags are read without importing torch (``--help`` and usage errors answer at once)."""
    for script, flag in (("inference_codeformer.py", "--input_path"), ("inference_colorization.py", "--input_path"),
                         ("inference_inpainting.py", "--input_path"), ("scripts/inference_vqgan.py", "--ckpt_path")):
        done = subprocess.run([sys.executable, "-X", "importtime", str(REPO / script), "--help"], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 0 and flag in done.stdout
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time")}
        assert "codeformer.flags" in imported and "torch" not in imported, script


def test_vqgan_reconstruction_script(face_folder: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    from checkpoint_factory import write_small_vqgan_checkpoint

    from codeformer.cli import vqgan_main

    # A narrower VQGAN in the official levels (the official width's layout is test_archs's): 512 px faces all the same.
    checkpoint = write_small_vqgan_checkpoint(tmp_path_factory.mktemp("small_vqgan") / "vqgan_code1024.pth")
    out = tmp_path / "rec"
    code = vqgan_main(["-i", str(face_folder), "-o", str(out), "--ckpt_path", str(checkpoint), "--device", "cpu", "-q"])
    err = capfd.readouterr().err
    assert code == 1 and "broken.jpg" in err and "Traceback" not in err
    outputs = sorted(p.name for p in out.iterdir())
    assert outputs == ["alpha.png", "colour.png", "gray.png", "宇航员.png"]
    assert read_image(out / "colour.png").bgr.shape == (512, 512, 3)


def test_vqgan_rejects_a_codeformer_checkpoint(face_folder: Path, restoration_weights: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import vqgan_main

    code = vqgan_main(["-i", str(face_folder / "colour.png"), "-o", str(tmp_path), "--device", "cpu", "-q",
                       "--ckpt_path", str(restoration_weights / "CodeFormer" / "codeformer.pth")])
    err = capfd.readouterr().err
    assert code == 1 and "is a CodeFormer checkpoint, not a VQGAN one" in err and "Traceback" not in err


def test_precision_auto_is_reported_and_fp16_on_cpu_refused(face_folder: Path, small_restoration_weights: Path,
                                                            tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """What ``auto`` chose is reported (the small network: the official size's bf16 accuracy is test_precision's)."""
    import torch

    from codeformer.precision import describe_precision, resolve_precision

    code = restore_main(["--has_aligned", "-i", str(face_folder / "colour.png"), "-o", str(tmp_path),
                         "--weights_dir", str(small_restoration_weights), "--device", "cpu", "--precision", "auto"])
    err = capfd.readouterr().err
    assert code == 0
    assert describe_precision(resolve_precision("auto", torch.device("cpu"))) in err
    assert read_image(tmp_path / "restored_faces" / "colour.png").width == SMALL_FACE

    # Refused before anything is downloaded: the (empty) weights root stays untouched, in both modes.
    empty = tmp_path / "no_weights"
    for mode in (["--has_aligned"], []):
        code = restore_main([*mode, "-i", str(face_folder / "colour.png"), "-o", str(tmp_path / "x"),
                             "--weights_dir", str(empty), "--device", "cpu", "--precision", "fp16", "-q"])
        err = capfd.readouterr().err
        assert code == 1
        assert err.strip() == "error: --precision fp16: CPUs compute float16 slowly; use bf16 or fp32"
        assert not empty.exists()
