"""Fixtures shared by the end-to-end tests: a weights root of random official-layout files, sample pictures."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from checkpoint_factory import cached_codeformer_checkpoint

_CHECKPOINT_FILES = {
    "codeformer": "CodeFormer/codeformer.pth",
    "colorization": "CodeFormer/codeformer_colorization.pth",
    "inpainting": "CodeFormer/codeformer_inpainting.pth",
}


def _link(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not destination.exists():
        try:
            os.link(source, destination)  # no copy of a 370 MB file
        except OSError:
            destination.symlink_to(source)


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty weights root; the fixtures below put random files in it on demand."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def restoration_weights(weights_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights root with a random ``CodeFormer/codeformer.pth``."""
    _link(cached_codeformer_checkpoint(tmp_path_factory, "codeformer"), weights_root / _CHECKPOINT_FILES["codeformer"])
    return weights_root


@pytest.fixture(scope="session")
def colorization_weights(weights_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _link(cached_codeformer_checkpoint(tmp_path_factory, "colorization"),
          weights_root / _CHECKPOINT_FILES["colorization"])
    return weights_root


@pytest.fixture(scope="session")
def inpainting_weights(weights_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _link(cached_codeformer_checkpoint(tmp_path_factory, "inpainting"), weights_root / _CHECKPOINT_FILES["inpainting"])
    return weights_root


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
