"""Face parsing: reference preprocessing, loading official-layout ParseNet files, batched masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoint_factory import SMALL_PARSENET_SHAPE, write_small_parsenet
from torchvision.transforms.functional import normalize

from codeformer.errors import CodeFormerError
from codeformer.face.parsing import (
    FaceParser,
    ParseNetShape,
    build_parsenet,
    load_face_parser,
    parsenet_shape,
    preprocess_faces,
)
from codeformer.precision import cpu_has_native_bf16
from codeformer.registry import load_parser, model_spec

PARSENET_KEY = model_spec("parsenet", "parser").weights[0]
from codeformer.face.pasteback import parse_labels_to_mask

PARSE_SIZE = 512
NUM_CLASSES = 19
# Batch and single runs of a real network may differ in the last float bits (other conv kernels),
# which can flip the argmax of a few near-tied pixels; more than this share would be a real bug.
MAX_DIFFERING_SHARE = 1e-3
RANGE_SLACK = 1e-9


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    """A 512x512 face crop and a 300x300 one (resized by the parser), BGR uint8."""
    from skimage import data

    picture = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR, 512x512
    face_512 = cv2.resize(picture[40:240, 130:330], (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_CUBIC)
    face_300 = np.ascontiguousarray(picture[0:300, 100:400])
    return [face_512, face_300]


def _reference_input(face: np.ndarray) -> torch.Tensor:
    """The reference's steps one by one: resize, /255 in float32, BGR->RGB, HWC->CHW, normalise."""
    face = cv2.resize(face, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
    image = cv2.cvtColor(face.astype("float32") / 255.0, cv2.COLOR_BGR2RGB)
    tensor = torch.from_numpy(image.transpose(2, 0, 1))
    return normalize(tensor, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_preprocessing_matches_the_reference_exactly(faces: list[np.ndarray]) -> None:
    odd = np.random.default_rng(0).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)  # not square
    inputs = preprocess_faces([*faces, odd])
    assert inputs.shape == (3, 3, PARSE_SIZE, PARSE_SIZE) and inputs.dtype == torch.float32
    for index, face in enumerate([*faces, odd]):
        assert torch.equal(inputs[index], _reference_input(face))
    with pytest.raises(ValueError, match=r"face 1: expected a \(H, W, 3\) BGR uint8 crop"):
        preprocess_faces([faces[0], faces[1].astype(np.float32)])


# ------------------------------------------------------------------------------------------------
# The real network, random weights saved like the official file


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random ParseNet saved as the official file is: a bare state dict (no wrapper, no prefix)."""
    weights_dir = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = build_parsenet().state_dict()
    path = weights_dir / PARSENET_KEY
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return weights_dir, state


@pytest.fixture(scope="module")
def parser(saved_state: tuple[Path, dict[str, torch.Tensor]]) -> FaceParser:
    return load_parser(device="cpu", weights_dir=saved_state[0])


def test_the_network_s_shape_is_read_from_the_file(saved_state: tuple[Path, dict[str, torch.Tensor]],
                                                   tmp_path: Path) -> None:
    _, official = saved_state
    assert {name: tensor.shape for name, tensor in build_parsenet(parsenet_shape(official)).state_dict().items()} \
        == {name: tensor.shape for name, tensor in official.items()}  # the reference's network, layer by layer
    small = load_face_parser(write_small_parsenet(tmp_path / "small.pth"), device="cpu")
    assert parsenet_shape(small.network.state_dict()) == ParseNetShape(**SMALL_PARSENET_SHAPE)
    (labels,) = small.labels([np.full((300, 300, 3), 90, np.uint8)])
    assert labels.shape == (PARSE_SIZE, PARSE_SIZE) and labels.min() >= 0 and labels.max() < 19
    decoder_cut = {name: tensor for name, tensor in official.items() if not name.startswith("decoder.3.")}
    other_network = {"encoder.0.conv2d.weight": torch.zeros(8, 3, 3, 3), "encoder.conv.weight": torch.zeros(8, 8, 1, 1),
                     "body.0.conv1.conv2d.weight": torch.zeros(8, 8, 3, 3)}
    too_deep = {"encoder.0.conv2d.weight": torch.zeros(8, 3, 3, 3), "body.0.conv1.conv2d.weight": torch.zeros(8, 8, 3, 3),
                **{f"encoder.{i}.conv2d.weight": torch.zeros(8, 8, 3, 3) for i in range(1, 11)},
                **{f"decoder.{i}.conv2d.weight": torch.zeros(8, 8, 3, 3) for i in range(10)}}  # 10 halvings of 512 px
    for state in (decoder_cut, {"body.0.conv1.conv2d.weight": torch.zeros(8, 8, 3, 3)}, other_network, too_deep):
        assert parsenet_shape(state) is None  # no ParseNet for 512 px faces: loading it says so (test below)


def test_official_layout_loads_strictly_in_eval_mode(
    parser: FaceParser, saved_state: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    _, state = saved_state
    loaded = parser.network.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not parser.network.training and parser.device == torch.device("cpu")


def test_a_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / PARSENET_KEY
    path.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(CodeFormerError, match=r"is not a ParseNet checkpoint.*delete it"):
        load_parser(device="cpu", weights_dir=tmp_path)


@pytest.fixture(scope="module")
def small_parser(tmp_path_factory: pytest.TempPathFactory) -> FaceParser:
    """The small ParseNet (the same layers, narrower and shallower): masks and batching work as with the full one."""
    return load_face_parser(write_small_parsenet(tmp_path_factory.mktemp("small_parsenet") / "parsenet.pth"),
                            device="cpu")


def test_masks_have_the_right_shape_and_range_and_batches_match_singles(
    small_parser: FaceParser, faces: list[np.ndarray]
) -> None:
    parser = small_parser
    batched = parser.masks(faces, batch_size=2)
    assert len(batched) == len(faces)
    for mask in batched:
        assert mask.shape == (PARSE_SIZE, PARSE_SIZE) and np.issubdtype(mask.dtype, np.floating)
        # Blurring a 0/1 map in float may overshoot 1 by a few ulps, as in the reference.
        assert np.isfinite(mask).all() and mask.min() >= 0.0 and mask.max() <= 1.0 + RANGE_SLACK
    # The second face alone (the 300x300 one, resized) gives the mask it got inside the batch.
    (single,) = parser.masks([faces[1]], batch_size=1)
    differing = np.abs(single - batched[1]) > 1e-6
    assert differing.mean() <= MAX_DIFFERING_SHARE


def test_bf16_precision_parses_in_bfloat16_and_auto_only_where_the_cpu_has_it(
    parser: FaceParser, saved_state: tuple[Path, dict[str, torch.Tensor]], monkeypatch
) -> None:
    from codeformer import precision
    from codeformer.registry import load_model

    weights_dir, _ = saved_state
    half = load_model("parsenet", "parser", device="cpu", weights_dir=weights_dir, precision="bf16")
    assert half.dtype == torch.bfloat16 and parser.dtype == torch.float32
    assert next(half.network.parameters()).dtype == torch.bfloat16
    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert load_model("parsenet", "parser", device="cpu", weights_dir=weights_dir, precision="auto").dtype == dtype


@pytest.mark.skipif(not cpu_has_native_bf16(),
                    reason="bfloat16 is emulated on this CPU (a minute per face); auto keeps ParseNet in fp32 there")
def test_bf16_labels_move_only_where_classes_nearly_tie(
    parser: FaceParser, faces: list[np.ndarray], saved_state: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    from codeformer.registry import load_model

    half = load_model("parsenet", "parser", device="cpu", weights_dir=saved_state[0], precision="bf16")
    # Labels move only where two classes nearly tie (measured: about 0.5% of them with random weights; the
    # final pictures stay within 59 dB of fp32's): a wrong dtype or layout would change most of them.
    (single,) = half.labels([faces[0]])
    (full,) = parser.labels([faces[0]])
    assert 0 < (single != full).mean() < 0.02


# ------------------------------------------------------------------------------------------------
# Batching logic with an exact stand-in network


class BrightnessParser(torch.nn.Module):
    """Labels each pixel by its red level (0..18), exactly, so batching cannot change anything."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        red = x[:, 0]  # (N, H, W) in [-1, 1]
        labels = ((red + 1) / 2 * (NUM_CLASSES - 1)).round().long()  # (N, H, W) in 0..18
        class_maps = F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()  # (N, 19, H, W)
        return class_maps, x


def test_batches_keep_order_and_equal_single_runs() -> None:
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, size=(64 * (1 + i % 2), 64, 3), dtype=np.uint8) for i in range(5)]
    stand_in = FaceParser(BrightnessParser(), torch.device("cpu"))
    batched = stand_in.labels(crops, batch_size=2)  # batches of 2, 2, 1
    singles = [stand_in.labels([crop], batch_size=1)[0] for crop in crops]
    assert len(batched) == len(crops)
    for crop, labels, single in zip(crops, batched, singles):
        assert labels.shape == (PARSE_SIZE, PARSE_SIZE)
        np.testing.assert_array_equal(labels, single)
        resized = cv2.resize(crop, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
        expected = np.rint(resized[:, :, 2].astype(np.float32) / 255 * (NUM_CLASSES - 1))  # red is BGR's last
        assert np.mean(labels == expected) > 0.999  # float rounding at .5 boundaries aside
    masks = stand_in.masks(crops, batch_size=3)
    for mask, labels in zip(masks, batched):
        np.testing.assert_array_equal(mask, parse_labels_to_mask(labels))
    assert stand_in.labels([], batch_size=4) == []
    with pytest.raises(ValueError, match="batch_size"):
        stand_in.labels(crops, batch_size=0)
