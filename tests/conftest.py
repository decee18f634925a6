"""Fixtures shared by the end-to-end tests: a weights root of random official-layout files, sample pictures."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from checkpoint_factory import cached_codeformer_checkpoint

CODEFORMER_FILE = "CodeFormer/codeformer.pth"  # where the weights root holds the restoration checkpoint


def _link(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not destination.exists():
        try:
            os.link(source, destination)  # no copy of a 370 MB file
        except OSError:
            destination.symlink_to(source)


# The modules that take longest, in that order, run first: pytest-xdist (the suite's workers, see
# pytest.ini) hands out whole modules in collection order, so the short ones fill the gaps at the end
# instead of one worker finishing a long module alone.
_LONGEST_MODULES = ("test_ray.py", "test_cli_aligned.py", "test_cli_whole.py", "test_temporal.py", "test_webapp.py",
                    "test_precision.py", "test_cli_hostile.py", "test_onnx_export.py", "test_spandrel_restorer.py",
                    "test_onnx_models.py", "test_independent_codeformer.py", "test_selection.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(_LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty weights root; the fixtures below put random files in it on demand."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def restoration_weights(weights_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights root with a random ``CodeFormer/codeformer.pth``."""
    _link(cached_codeformer_checkpoint(tmp_path_factory, "codeformer"), weights_root / CODEFORMER_FILE)
    return weights_root


@pytest.fixture(scope="session")
def small_restoration_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights root whose ``CodeFormer/codeformer.pth`` is a small CodeFormer (128 px crops) and whose
    ``facelib/parsing_parsenet.pth`` is a narrow, shallow ParseNet (512 px in and out), both in the official
    layouts: whole commands in a fraction of the time.

    The command reads both networks' sizes from the files, so everything but the crop size (alignment,
    paste-back, parsing, the output layout) runs as with the full-size files.
    """
    from checkpoint_factory import SMALL_CONFIG, write_small_codeformer_checkpoint, write_small_parsenet

    from codeformer.face.retinaface import build_retinaface

    root = tmp_path_factory.mktemp("small_weights")
    write_small_codeformer_checkpoint(root / CODEFORMER_FILE, SMALL_CONFIG)
    write_small_parsenet(root / "facelib" / "parsing_parsenet.pth")
    # A RetinaFace (MobileNet, the small one) that finds no face, for runs where faces do not matter.
    torch.manual_seed(0)
    state = build_retinaface("mobile0.25", torch.device("cpu")).state_dict()
    for head in range(3):
        state[f"ClassHead.{head}.conv1x1.weight"].zero_()
        state[f"ClassHead.{head}.conv1x1.bias"].copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
    torch.save(state, root / "facelib" / "detection_mobilenet0.25_Final.pth")
    return root


@pytest.fixture(scope="session")
def parsing_weights(weights_root: Path) -> Path:
    """The weights root with a random ParseNet in the official ``facelib/parsing_parsenet.pth`` layout."""
    from codeformer.face.parsing import build_parsenet

    path = weights_root / "facelib" / "parsing_parsenet.pth"
    if not path.exists():
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_parsenet().state_dict(), path)
    return weights_root


@pytest.fixture(scope="session")
def retinaface_weights(weights_root: Path) -> Path:
    """The weights root with a random RetinaFace ResNet-50 in the official layout that finds no faces.

    Random weights alone make it fire everywhere (thousands of "faces"); its classification heads are
    set to say "background" for every anchor (2 anchors x (background, face) logits per head).
    """
    from codeformer.face.retinaface import build_retinaface

    path = weights_root / "facelib" / "detection_Resnet50_Final.pth"
    if not path.exists():
        torch.manual_seed(0)
        state = build_retinaface("resnet50", torch.device("cpu")).state_dict()
        for head in range(3):
            state[f"ClassHead.{head}.conv1x1.weight"].zero_()
            state[f"ClassHead.{head}.conv1x1.bias"].copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    return weights_root


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain): 512x512, one face, BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(autouse=True)
def _reset_codeformer_logging() -> None:
    """Each CLI run installs its log handler; start every test without one."""
    package_logger = logging.getLogger("codeformer")
    for handler in list(package_logger.handlers):
        package_logger.removeHandler(handler)
    package_logger.propagate = True


# --------------------------------------------------------------------------------- shared work
# The suite runs many whole commands in this process on the same few pictures and weights. Two
# things they repeat are shared for the session, without changing what any command computes:
# dlib's detections of identical pictures (its CNN is deterministic and takes seconds per picture),
# and the pipeline a command line loads for identical load options and identical weight files.


def _weights_identity(options) -> tuple:
    """The files a pipeline would be built from, by path, size and modification time."""
    from codeformer.weights import resolve_weights_dir

    root = resolve_weights_dir(options.weights_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")) if root.is_dir() else []
    explicit = [Path(p).expanduser() for p in (options.model, options.checkpoint, options.bg_upsampler)
                if p is not None and Path(p).expanduser().is_file()]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (*files, *explicit))


@pytest.fixture(scope="session", autouse=True)
def _tuned_runtime() -> None:
    """The process-wide CPU settings every entry point applies (codeformer.precision.configure_cpu_runtime):
    the commands the suite runs in this process then compute as they do when a user runs them."""
    from codeformer.precision import configure_cpu_runtime

    configure_cpu_runtime()
    # pytest-xdist runs the suite in several processes: share the cores between them rather than have
    # each one's thread pool fight the others' for every core.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.fixture(scope="session", autouse=True)
def _share_detections_and_pipelines(tmp_path_factory: pytest.TempPathFactory) -> None:
    import pickle
    from collections import OrderedDict

    from checkpoint_factory import shared_dir, written_once
    from codeformer._atomic import atomic_path
    from codeformer.face import dlib_detector
    from codeformer.jobs import run

    detect = dlib_detector.DlibDetector.detect
    detections: dict[str, list] = {}
    # On disk too, so that the suite's worker processes (pytest-xdist) detect each picture once between them.
    on_disk = shared_dir(tmp_path_factory, "dlib_detections")

    def detect_to_file(detector, image: np.ndarray, path: Path) -> Path:
        faces = detect(detector, image)
        with atomic_path(path) as temporary:
            Path(temporary).write_bytes(pickle.dumps(faces))
        return path

    def remembered_detect(self, image: np.ndarray) -> list:
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        key = f"{'x'.join(map(str, image.shape))}_{image.dtype}_{digest}_{self._upsample_times}"
        if key not in detections:
            path = written_once(on_disk / f"{key}.pickle", lambda target: detect_to_file(self, image, target))
            detections[key] = pickle.loads(path.read_bytes())
        return list(detections[key])

    load = run._load
    pipelines: OrderedDict[tuple, object] = OrderedDict()

    def shared_load(job):
        options = job.loading()
        key = (options, _weights_identity(options))
        pipeline = pipelines.get(key)
        if pipeline is None:
            pipeline, prepared = load(job)
            pipelines[key] = pipeline
            while len(pipelines) > 2:  # each holds a CodeFormer: keep memory bounded
                pipelines.popitem(last=False)
            return pipeline, prepared
        pipelines.move_to_end(key)
        logging.getLogger("codeformer.pipeline").info("loaded %s", pipeline.describe())
        return pipeline, pipeline.prepare(job.restore)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dlib_detector.DlibDetector, "detect", remembered_detect)
        # Jobs of several pictures and videos would detect in a process of their own, which cannot share
        # detections: here dlib detects in the test's process (test_detection_process runs it apart, and
        # shows the faces are the same).
        patch.setattr(dlib_detector.DlibDetector, "prefers_own_process", False)
        patch.setattr(run, "_load", shared_load)
        yield
