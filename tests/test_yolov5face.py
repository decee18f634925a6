"""YOLOv5-face: official layouts, strict loading, the reference's letterbox, decoding, NMS and scale-back,
and whole pictures through find_faces / plan_faces against what the original's face helper finds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codeformer.errors import CodeFormerError
from codeformer.face.alignment import FFHQ_TEMPLATE_5
from codeformer.face.detection import DetectedFace, eye_distance, find_faces, find_faces_in_frames
from codeformer.registry import load_detector
from codeformer.options import RestoreOptions
from codeformer.restoration import Models, plan_faces, working_image
from codeformer.imageio import Picture
from codeformer.face.yolov5face import (
    ANCHORS,
    STRIDES,
    YOLOV5FACE_VARIANTS,
    YOLOv5Face,
    YOLOv5FaceDetector,
    build_yolov5face,
    decode_outputs,
    letterbox,
    scale_to_picture,
    select_faces,
    to_reference_pixels,
)

# A copy of the project's spec of the official files' tensor names and shapes, kept with the tests.
SPEC_PATH = Path(__file__).resolve().parent / "data" / "yolov5face_layouts.json"
# What sczhou/CodeFormer's own face helper finds on whole_pictures() with firing_state() weights, written
# by `python -m benchmarks.original yolov5-expectations --original DIR` (DIR: a checkout of the original).
ORIGINAL_PATH = Path(__file__).resolve().parent / "data" / "yolov5face_original.json"
REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_FILES = {"YOLOv5l": "yolov5l-face.pth", "YOLOv5n": "yolov5n-face.pth"}
OBJ, CLS = 4, 15  # columns of a decoded row: cx, cy, w, h, objectness, 10 landmark values, class
LOGIT_ON, LOGIT_OFF = 20.0, -20.0  # sigmoid: 1 - 2e-9 and 2e-9, far on either side of every threshold
# Batched vs single forward of the random network: float rounding only, relative to the output's scale.
BATCH_TOLERANCE = 1e-5


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture(scope="module")
def spec() -> dict[str, dict[str, list[int]]]:
    return json.loads(SPEC_PATH.read_text())


def _save_official(name: str, weights_dir: Path, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random network's weights saved like the official file: a plain state dict under facelib/."""
    torch.manual_seed(seed)
    state = build_yolov5face(name).state_dict()
    for key, value in state.items():  # running statistics differ from a fresh build's
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.1)
    path = weights_dir / "facelib" / f"{name.lower()}-face.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


# ------------------------------------------------------------------------------------------------
# Layout and loading


@pytest.mark.parametrize("name", YOLOV5FACE_VARIANTS)
def test_random_network_has_the_official_layout(name: str, spec: dict[str, dict[str, list[int]]]) -> None:
    expected = spec[OFFICIAL_FILES[name]]
    got = {key: list(value.shape) for key, value in build_yolov5face(name).state_dict().items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {key: shape for key, shape in got.items() if expected[key] != shape} == {}


def test_levels_have_the_reference_strides_and_forward_decodes_them() -> None:
    network = build_yolov5face("YOLOv5n")
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        raw = network.raw_outputs(x)
        decoded = network(x)
    # strides 8, 16, 32; 3 anchors per cell; 16 values per anchor
    assert [tuple(level.shape) for level in raw] == [(1, 3, 8, 12, 16), (1, 3, 4, 6, 16), (1, 3, 2, 3, 16)]
    torch.testing.assert_close(decoded, decode_outputs(raw, network.head.anchor_grid), rtol=0, atol=0)
    # Buffers as in the official files: anchors in pixels (anchor_grid) and in grid cells (anchors).
    pixels = torch.tensor(ANCHORS, dtype=torch.float32)
    assert torch.equal(network.head.anchor_grid.view(3, 3, 2), pixels)
    assert torch.equal(network.head.anchors * torch.tensor(STRIDES).view(3, 1, 1), pixels)
    with pytest.raises(ValueError, match="multiples of 32"):
        network(torch.rand(1, 3, 64, 80))


@pytest.mark.parametrize("name", YOLOV5FACE_VARIANTS)
def test_official_layout_loads_strictly(name: str, tmp_path: Path) -> None:
    saved = _save_official(name, tmp_path)
    detector = load_detector(name, device="cpu", weights_dir=tmp_path)
    assert detector.name == name and detector.template_name == "ffhq"
    assert isinstance(detector.network, YOLOv5Face) and not detector.network.training
    assert detector.device == torch.device("cpu")
    loaded = detector.network.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_missing_or_misshapen_tensor_gives_a_one_line_error(tmp_path: Path) -> None:
    state = _save_official("YOLOv5n", tmp_path)
    path = tmp_path / "facelib" / "yolov5n-face.pth"
    broken = dict(state)
    del broken["model.21.m.2.bias"]
    torch.save(broken, path)
    with pytest.raises(CodeFormerError, match=r"is not a YOLOv5-face \(YOLOv5n\) checkpoint.*delete it") as raised:
        load_detector("YOLOv5n", device="cpu", weights_dir=tmp_path)
    assert "\n" not in str(raised.value)

    broken = dict(state, **{"model.21.m.2.bias": torch.zeros(47)})
    torch.save(broken, path)
    with pytest.raises(CodeFormerError, match=r"is not a YOLOv5-face \(YOLOv5n\) checkpoint") as raised:
        load_detector("YOLOv5n", device="cpu", weights_dir=tmp_path)
    assert "\n" not in str(raised.value)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CodeFormerError, match=r"cannot read checkpoint") as raised:
        load_detector("YOLOv5n", device="cpu", weights_dir=tmp_path)
    assert "\n" not in str(raised.value)


def test_unknown_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(CodeFormerError) as raised:
        load_detector("YOLOv5s", device="cpu", weights_dir=tmp_path)
    message = str(raised.value)
    assert "YOLOv5s" in message and "YOLOv5l" in message and "YOLOv5n" in message and "\n" not in message
    with pytest.raises(CodeFormerError, match="YOLOv5l, YOLOv5n"):
        build_yolov5face("yolov5n")


# ------------------------------------------------------------------------------------------------
# Pure steps, checked against numbers worked out by hand


def test_letterbox_by_hand() -> None:
    rng = np.random.default_rng(0)
    # 20x30 (h x w): target 32 (30 rounded up to 32), ratio min(32/20, 32/30) = 16/15, resized to
    # 32 x round(21.33) = 21; padding (32 - 21) % 64 = 11 rows: 5 above, 6 below; none across.
    picture = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    boxed = letterbox(picture)
    assert boxed.shape == (32, 32, 3)
    assert (boxed[:5] == 114).all() and (boxed[26:] == 114).all()
    np.testing.assert_array_equal(boxed[5:26], cv2.resize(picture, (32, 21), interpolation=cv2.INTER_LINEAR))
    # 100x300: target 320, ratio 16/15, resized to 320 x round(106.67) = 107; padding 213 % 64 = 21
    # rows (10 above, 11 below): 128 rows, a multiple of 32 below the target.
    assert letterbox(rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)).shape == (128, 320, 3)
    # 500x200: target 512, ratio 1.024, resized to round(204.8) = 205 x 512; padding 307 % 64 = 51
    # columns (25 left, 26 right).
    tall = letterbox(rng.integers(0, 256, (500, 200, 3), dtype=np.uint8))
    assert tall.shape == (512, 256, 3) and (tall[:, :25] == 114).all() and (tall[:, 230:] == 114).all()
    # 64x96: no resize, but 32 rows of padding (32 % 64 = 32), 16 above and 16 below: 96x96.
    wide = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    boxed = letterbox(wide)
    assert boxed.shape == (96, 96, 3) and (boxed[:16] == 114).all() and (boxed[80:] == 114).all()
    np.testing.assert_array_equal(boxed[16:80], wide)
    # 64x128: padding 64 % 64 = 0 rows: nothing changes.
    unchanged = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    np.testing.assert_array_equal(letterbox(unchanged), unchanged)


def test_decode_outputs_by_hand() -> None:
    # A 64x64 input: levels of 8x8 (stride 8), 4x4 (16) and 2x2 (32) cells, 3 anchors each.
    raw = [torch.zeros(1, 3, side, side, 16) for side in (8, 4, 2)]
    anchor_grid = torch.tensor(ANCHORS, dtype=torch.float32).view(3, 1, 3, 1, 1, 2)
    # Level 0 (stride 8), anchor 1 (8 x 10 px), cell gx = 2, gy = 3.
    cell = raw[0][0, 1, 3, 2]
    cell[0:4] = torch.tensor([math.log(3), -math.log(3), math.log(3), -math.log(3)])  # sigmoids .75 .25 .75 .25
    cell[OBJ], cell[CLS] = _logit(0.9), _logit(0.8)
    cell[5:15] = torch.tensor([0.5, -0.2, 1.0, 0.1, 0.0, 0.0, -1.5, 0.6, 2.0, 1.2])
    decoded = decode_outputs(raw, anchor_grid)
    assert decoded.shape == (1, 3 * (64 + 16 + 4), 16)

    # Rows go level, anchor, gy, gx: 1 * 64 + 3 * 8 + 2 = 90.
    # cx = (2 * .75 - .5 + 2) * 8 = 24     cy = (2 * .25 - .5 + 3) * 8 = 24
    # w  = (2 * .75)**2 * 8 = 18           h  = (2 * .25)**2 * 10 = 2.5
    # landmark = raw * anchor + cell * stride, cell corner (16, 24):
    #   ( .5 * 8 + 16, -.2 * 10 + 24) = (20, 22)     (1 * 8 + 16,  .1 * 10 + 24) = (24, 25)
    #   (  0 * 8 + 16,   0 * 10 + 24) = (16, 24)     (-1.5 * 8 + 16, .6 * 10 + 24) = (4, 30)
    #   (  2 * 8 + 16, 1.2 * 10 + 24) = (32, 36)
    expected = [24, 24, 18, 2.5, 0.9, 20, 22, 24, 25, 16, 24, 4, 30, 32, 36, 0.8]
    torch.testing.assert_close(decoded[0, 90], torch.tensor(expected), rtol=0, atol=1e-5)

    # An untouched cell (all raw values 0): level 2 (stride 32), anchor 2 (335 x 433 px), gx = 0, gy = 1,
    # row 3 * 64 + 3 * 16 + 2 * 4 + 1 * 2 + 0 = 250.
    # cx = (1 - .5 + 0) * 32 = 16, cy = (1 - .5 + 1) * 32 = 48, w = 1 * 335, h = 1 * 433, probabilities .5,
    # every landmark at the cell corner (0, 32).
    expected = [16, 48, 335, 433, 0.5] + [0, 32] * 5 + [0.5]
    torch.testing.assert_close(decoded[0, 250], torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-5)


def _decoded_row(cx: float, cy: float, w: float, h: float, objectness: float, class_p: float) -> list[float]:
    return [cx, cy, w, h, objectness] + [float(i) for i in range(10)] + [class_p]


def test_select_faces_thresholds_and_nms() -> None:
    predictions = torch.tensor([
        _decoded_row(50, 50, 20, 20, 0.9, 0.9),  # A: confidence .81: kept
        _decoded_row(90, 90, 20, 20, 0.95, 0.7),  # objectness passes, .95 * .7 = .665 does not: dropped
        _decoded_row(10, 10, 20, 20, 0.69, 1.0),  # objectness under .7: dropped
        _decoded_row(52, 50, 20, 20, 0.9, 0.8),  # D: .72, IoU with A 360 / 440 = .82 > .5: suppressed
        _decoded_row(62, 50, 20, 20, 0.75, 1.0),  # E: .75, IoU with A 160 / 640 = .25: kept
    ])
    rows = select_faces(predictions)
    assert rows.shape == (2, 16)
    # Highest confidence first; centre/size became corners; landmarks carried; class index 0.
    torch.testing.assert_close(rows[:, :5], torch.tensor([[40, 40, 60, 60, 0.81], [52, 40, 72, 60, 0.75]]))
    assert rows[:, 5:15].tolist() == [[float(i) for i in range(10)]] * 2 and rows[:, 15].tolist() == [0, 0]
    # A looser IoU threshold keeps D; thresholds are strict (.75 exactly is not above .75).
    assert select_faces(predictions, iou_threshold=0.9)[:, 4].tolist() == pytest.approx([0.81, 0.75, 0.72])
    assert select_faces(predictions, conf_threshold=0.75)[:, 4].tolist() == pytest.approx([0.81])
    assert select_faces(predictions[1:3]).shape == (0, 16)


def test_scale_to_picture_and_reference_pixels_by_hand() -> None:
    # A 20x30 picture letterboxed to 32x32: gain = min(32/20, 32/30) = 16/15, padding
    # x (32 - 30 * 16/15) / 2 = 0 and y (32 - 20 * 16/15) / 2 = 16/3.
    row = torch.tensor([[8, 10, 24, 22, 0.99, 12, 15, -4, 40, 33, 18, 12, 21, 20, 21, 0]], dtype=torch.float32)
    scaled = scale_to_picture(row, (32, 32), (20, 30))
    # x * 15/16, (y - 16/3) * 15/16, clipped to [0, 30] x [0, 20]:
    # box (7.5, 4.375, 22.5, 15.625); landmarks (11.25, 9.0625), (0 [-3.75], 20 [32.5]),
    # (30 [30.9375], 11.875), (11.25, 14.6875), (18.75, 14.6875).
    expected = [7.5, 4.375, 22.5, 15.625, 0.99, 11.25, 9.0625, 0, 20, 30, 11.875, 11.25, 14.6875, 18.75, 14.6875, 0]
    torch.testing.assert_close(scaled, torch.tensor([expected]), rtol=0, atol=1e-5)
    # The reference truncates float32(v / side) * side: 7 / 10 is 0.69999999 in float32, so 7 becomes 6.
    pixels = to_reference_pixels(torch.tensor([[7.0, 3.0, 7.5, 4.9]]), (5, 10))
    assert pixels.tolist() == [[6.0, 3.0, 7.0, 4.0]]


# ------------------------------------------------------------------------------------------------
# Detection end to end


def _single_anchor_network(anchor_px: tuple[float, float], landmarks_raw: list[float]) -> YOLOv5Face:
    """YOLOv5n whose head ignores its features (zero weights) and fires only the first stride-32 anchor.

    With zero weights the head outputs its biases at every cell, so on a 32x32 input (one stride-32
    cell) exactly one prediction passes the thresholds.
    """
    torch.manual_seed(0)
    network = build_yolov5face("YOLOv5n")
    head = network.head
    with torch.no_grad():
        for conv in head.m:
            conv.weight.zero_()
            conv.bias.zero_()
            conv.bias.view(3, 16)[:, OBJ] = LOGIT_OFF
        firing = head.m[2].bias.view(3, 16)[0]  # level 2, anchor 0
        firing[OBJ] = firing[CLS] = LOGIT_ON
        firing[5:15] = torch.tensor(landmarks_raw)
        head.anchor_grid[2, 0, 0, 0, 0] = torch.tensor(anchor_px)
    return network


def test_detect_end_to_end_by_hand() -> None:
    # Letterboxed landmarks (x, y) = raw * (16, 12): (12, 15) (20, 15) (17, 18) (12, 21) (20, 21).
    network = _single_anchor_network((16.0, 12.0), [0.75, 1.25, 1.25, 1.25, 1.0625, 1.5, 0.75, 1.75, 1.25, 1.75])
    detector = YOLOv5FaceDetector("YOLOv5n", network)
    picture = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    faces = detector.detect(picture)
    # The 20x30 picture becomes 32x32 (test_letterbox_by_hand): one stride-32 cell at (0, 0).
    # Box: centre (2 * .5 - .5 + 0) * 32 = 16 both ways, size (2 * .5)**2 * (16, 12) = 16 x 12:
    # corners (8, 10, 24, 22). Back to the picture: x * 15/16, (y - 16/3) * 15/16 (gain 16/15, padding
    # 16/3 rows): (7.5, 4.375, 22.5, 15.625) -> whole pixels (7, 4, 22, 15), 11 px tall (>= 10).
    # Landmarks: x 12, 20, 17 -> 11.25, 18.75, 15.9375; y 15, 18, 21 -> 9.0625, 11.875, 14.6875.
    assert len(faces) == 1
    face = faces[0]
    assert face.box.tolist() == [7, 4, 22, 15]
    assert face.landmarks.tolist() == [[11, 9], [18, 9], [15, 11], [11, 14], [18, 14]]
    assert face.score == pytest.approx(1.0)
    # An 11 px tall box is under a 12 px minimum face.
    assert YOLOv5FaceDetector("YOLOv5n", network, min_face=12).detect(picture) == []


class BrightCellNetwork(nn.Module):
    """Stands in for a YOLOv5Face: fires the first stride-32 anchor at every 32x32 cell that is mostly white."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor_grid", torch.full((3, 1, 3, 1, 1, 2), 16.0))  # 16 x 16 px boxes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, P, 16)
        batch, _, height, width = x.shape
        raw = [torch.full((batch, 3, height // s, width // s, 16), LOGIT_OFF, device=x.device) for s in STRIDES]
        brightness = F.avg_pool2d(x.mean(1, keepdim=True), STRIDES[-1])[:, 0]  # (B, H/32, W/32) in [0, 1]
        top = raw[2][:, 0]  # (B, H/32, W/32, 16): level 2, anchor 0
        top[..., 0:4] = 0.0  # centred in its cell, 16 x 16
        top[..., OBJ] = (brightness - 0.5) * 2 * LOGIT_ON
        top[..., CLS] = LOGIT_ON
        top[..., 5:15] = 0.25  # every landmark 4 px right of and below the cell corner
        return decode_outputs(raw, self.anchor_grid)


def test_detect_batch_equals_detect_per_frame() -> None:
    frames = [np.zeros((96, 96, 3), dtype=np.uint8) for _ in range(3)]
    frames[0][0:32, 0:32] = 255  # cell (0, 0)
    frames[0][32:64, 64:96] = 255  # cell (2, 1)
    frames[1][32:64, 32:64] = 255  # cell (1, 1); frames[2] stays dark
    detector = YOLOv5FaceDetector("YOLOv5n", BrightCellNetwork())
    batched = detector.detect_batch(frames)
    singles = [detector.detect(frame) for frame in frames]
    assert [len(faces) for faces in batched] == [2, 1, 0]
    for batch_faces, single_faces in zip(batched, singles):
        assert len(batch_faces) == len(single_faces)
        for a, b in zip(batch_faces, single_faces):
            assert a.box.tolist() == b.box.tolist() and a.landmarks.tolist() == b.landmarks.tolist()
            assert a.score == b.score
    # Each box is its cell's centre +- 8 px, each landmark its cell corner + 4 px: cell (0, 0) gives box
    # (8, 8, 24, 24), landmarks (4, 4); cell (2, 1) gives (72, 40, 88, 56) and (68, 36), but the reference's
    # float32 round trip makes 40 / 96 * 96 = 39.99999 -> 39, 56 -> 55 and 68 -> 67.
    assert [face.box.tolist() for face in batched[0]] == [[8, 8, 24, 24], [72, 39, 88, 55]]
    assert [face.landmarks.tolist() for face in batched[0]] == [[[4, 4]] * 5, [[67, 36]] * 5]
    assert [face.box.tolist() for face in batched[1]] == [[39, 39, 55, 55]]  # (40, 40, 56, 56), same round trip
    assert detector.detect_batch([]) == []
    with pytest.raises(ValueError, match="one size"):
        detector.detect_batch([frames[0], frames[0][:64]])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) BGR uint8"):
        detector.detect(np.zeros((64, 64), dtype=np.uint8))


def test_random_network_batches_like_singles_and_detects() -> None:
    torch.manual_seed(0)
    network = build_yolov5face("YOLOv5n")
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        batched = network(x)
        singles = torch.cat([network(x[0:1]), network(x[1:2])])
    scale = max(1.0, singles.abs().max().item())
    torch.testing.assert_close(batched, singles, rtol=0, atol=BATCH_TOLERANCE * scale)
    detector = YOLOv5FaceDetector("YOLOv5n", network)
    frames = list(np.random.default_rng(0).integers(0, 256, (2, 50, 70, 3), dtype=np.uint8))
    for faces in detector.detect_batch(frames):
        assert all(isinstance(face, DetectedFace) for face in faces)
        assert all((face.box >= 0).all() and face.box[2] <= 70 and face.box[3] <= 50 for face in faces)
        assert [face.score for face in faces] == sorted((face.score for face in faces), reverse=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_result() -> None:
    network = _single_anchor_network((16.0, 12.0), [0.75, 1.25, 1.25, 1.25, 1.0625, 1.5, 0.75, 1.75, 1.25, 1.75])
    picture = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    on_cpu = YOLOv5FaceDetector("YOLOv5n", network).detect(picture)
    on_cuda = YOLOv5FaceDetector("YOLOv5n", network.to("cuda")).detect_batch([picture, picture])
    assert [face.box.tolist() for face in on_cpu] == [[7, 4, 22, 15]]
    for faces in on_cuda:
        assert [face.box.tolist() for face in faces] == [[7, 4, 22, 15]]
        assert [face.landmarks.tolist() for face in faces] == [face.landmarks.tolist() for face in on_cpu]


# ------------------------------------------------------------------------------------------------
# Whole pictures: the face helper's steps around the detector, against the original

# Random weights whose head fires on a few boxes of a real photo. Default-initialised, the network's
# features are the same everywhere (its activations shrink layer after layer) and the head fires
# everywhere or nowhere; He-initialised convolutions keep them varied. Objectness and class logits
# are spread by `confidence_gain` and shifted by `confidence_bias` so that a few dozen boxes pass
# 0.7; landmark offsets are shrunk by `landmark_gain` so that many faces come near the reference's
# 5 px eye-distance filter.
FIRING_SETTINGS = {"seed": 0, "conv_gain": 2.0, "running_mean_std": 0.1, "confidence_gain": 3.0,
                   "confidence_bias": -6.0, "landmark_gain": 0.007, "box_gain": 1.0}
_BOX_COLUMNS, _LANDMARK_COLUMNS, _CONFIDENCE_COLUMNS = slice(0, 4), slice(5, 15), [OBJ, CLS]


def firing_state(name: str, settings: dict[str, float] = FIRING_SETTINGS) -> dict[str, torch.Tensor]:
    """Random ``name`` weights in the official layout whose head fires on some boxes (see above)."""
    generator = torch.Generator().manual_seed(int(settings["seed"]))
    network = build_yolov5face(name)
    state = network.state_dict()
    head = f"model.{len(network.model) - 1}."
    for key, value in state.items():
        if value.ndim == 4 and not key.startswith(head):  # (out, in, kh, kw) convolutions
            fan_in = value[0].numel()
            value.copy_(torch.randn(value.shape, generator=generator) * math.sqrt(settings["conv_gain"] / fan_in))
        elif key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=generator) * settings["running_mean_std"])
    for level in range(len(STRIDES)):
        weight, bias = state[f"{head}m.{level}.weight"], state[f"{head}m.{level}.bias"]
        weight.copy_(torch.randn(weight.shape, generator=generator) / math.sqrt(weight[0].numel()))
        bias.zero_()
        per_anchor = weight.view(3, 16, -1)  # (anchors, outputs, in)
        per_anchor[:, _CONFIDENCE_COLUMNS] *= settings["confidence_gain"]
        per_anchor[:, _LANDMARK_COLUMNS] *= settings["landmark_gain"]
        per_anchor[:, _BOX_COLUMNS] *= settings["box_gain"]
        bias.view(3, 16)[:, _CONFIDENCE_COLUMNS] = settings["confidence_bias"]
    return state


def whole_pictures() -> dict[str, np.ndarray]:
    """Three BGR photos: 512x512 (detected at 640, bilinear), 420x800 (raised to 512x975 first, then
    640x1218) and 840x1600 (reduced to 640x1219 with INTER_AREA)."""
    from skimage.data import astronaut

    pair = cv2.imread(str(REPO_ROOT / "inputs" / "whole_imgs" / "astronaut_pair.jpg"), cv2.IMREAD_COLOR)
    return {
        "astronaut": cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR),
        "astronaut_pair": pair,
        "astronaut_pair_x2": cv2.resize(pair, (1600, 840), interpolation=cv2.INTER_LINEAR),
    }


class TemplateRestorer:
    """Only what plan_faces reads from a restorer: the crop size and the FFHQ template."""

    name = "template-only"
    input_size = 512
    template = FFHQ_TEMPLATE_5
    supports_fidelity = True
    precision = "fp32"


@pytest.fixture(scope="module")
def original() -> dict:
    return json.loads(ORIGINAL_PATH.read_text())


@pytest.fixture(scope="module")
def firing_detector(original: dict, tmp_path_factory: pytest.TempPathFactory) -> YOLOv5FaceDetector:
    """The test weights saved as the official file and loaded as the command line loads them."""
    name = original["detector"]
    assert original["weights"] == FIRING_SETTINGS  # the stored faces were found with these weights
    weights_dir = tmp_path_factory.mktemp("yolov5_firing")
    path = weights_dir / "facelib" / f"{name.lower()}-face.pth"
    path.parent.mkdir(parents=True)
    torch.save(firing_state(name), path)
    return load_detector(name, device="cpu", weights_dir=weights_dir)


@pytest.mark.parametrize("picture_name", ["astronaut", "astronaut_pair", "astronaut_pair_x2"])
def test_whole_picture_faces_and_crops_are_the_originals(
    picture_name: str, original: dict, firing_detector: YOLOv5FaceDetector
) -> None:
    expected = original["pictures"][picture_name]
    bgr = whole_pictures()[picture_name]
    plan = plan_faces(Picture(bgr, None, 3), Models(TemplateRestorer(), firing_detector), RestoreOptions())
    assert list(plan.work_image.shape[:2]) == expected["work_size"]
    assert len(expected["boxes"]) >= 10  # a test that sees faces
    # Same faces in the same order; boxes and landmarks bit for bit (whole pixels of the 640 px copy
    # divided by the scale in float64), so the same alignments and crops.
    assert len(plan.faces) == len(expected["boxes"])
    np.testing.assert_array_equal([face.box for face in plan.faces], expected["boxes"])
    np.testing.assert_array_equal([face.landmarks for face in plan.faces], expected["landmarks"])
    np.testing.assert_allclose(plan.affines, expected["affines"], rtol=0, atol=1e-9)
    np.testing.assert_allclose([crop.mean() for crop in plan.crops], expected["crop_means"], rtol=0, atol=1e-3)


def test_the_eye_filter_matters_on_the_test_pictures(original: dict, firing_detector: YOLOv5FaceDetector) -> None:
    # On the two pictures detected on an enlarged copy, the stored faces are a strict subset of what
    # the detector gives, and the reference's filter keeps other faces than a true eye distance
    # would: the whole-picture test can tell. (On the reduced copy of the third, no face is near 5 px.)
    pictures = whole_pictures()
    for name in ("astronaut", "astronaut_pair"):
        image, _ = working_image(Picture(pictures[name], None, 3))
        unfiltered = find_faces(image, firing_detector, eye_dist_threshold=None)
        by_true_distance = [face for face in unfiltered if eye_distance(face, "ffhq") >= 5]
        expected = original["pictures"][name]["boxes"]
        assert len(by_true_distance) != len(expected) < len(unfiltered)


def test_find_faces_in_frames_finds_the_originals_faces(original: dict, firing_detector: YOLOv5FaceDetector) -> None:
    # Video frames go through detect_batch, the same scale-back and the same filter.
    bgr = whole_pictures()["astronaut"]
    (faces,) = find_faces_in_frames([bgr], firing_detector)
    np.testing.assert_array_equal([face.box for face in faces], original["pictures"]["astronaut"]["boxes"])


class _ListedYOLO(YOLOv5FaceDetector):
    """A YOLOv5-face detector whose network is replaced by preset faces (in the detector's pixels)."""

    def __init__(self, faces: list[DetectedFace]) -> None:
        super().__init__("YOLOv5n", nn.Identity())
        self.faces = faces

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        return list(self.faces)


def _points(*xy: tuple[float, float]) -> DetectedFace:
    """A face with the given left eye, right eye and nose (mouth corners below the nose)."""
    (lx, ly), (rx, ry), (nx, ny) = xy
    return DetectedFace(box=(0, 0, 100, 100), score=0.9,
                        landmarks=[(lx, ly), (rx, ry), (nx, ny), (lx, ny + 10), (rx, ny + 10)])


def test_eye_filter_reads_the_rows_one_column_off_like_the_reference() -> None:
    # The reference measures norm(row[6] - row[8], row[7] - row[9]): (left eye y - right eye y,
    # right eye x - nose x). Picture with a 640 short side: no resize, coordinates as given.
    level_eyes_nose_under_right_eye = _points((10, 50), (30, 50), (29, 60))  # true 20, reference 1: dropped
    slanted = _points((10, 50), (12, 56), (6, 60))  # true 6.3, reference norm(-6, 6) = 8.5: kept
    close_eyes_far_nose = _points((10, 50), (11, 50), (4, 60))  # true 1, reference 7: kept
    faces = [level_eyes_nose_under_right_eye, slanted, close_eyes_far_nose]
    picture = np.zeros((640, 800, 3), dtype=np.uint8)
    assert find_faces(picture, _ListedYOLO(faces)) == [slanted, close_eyes_far_nose]
    assert find_faces(picture, _ListedYOLO(faces), eye_dist_threshold=None) == faces


def test_whole_pixel_rows_are_mapped_back_in_float64() -> None:
    # A 481x600 picture is detected at 640x798 (scale 640/481); the reference divides YOLOv5's int64
    # rows by the scale in float64 (RetinaFace's float32 rows stay float32).
    box = [101, 121, 301, 321]
    face = DetectedFace(box=box, score=0.9, landmarks=[(141, 161), (181, 161), (161, 191), (145, 221), (177, 221)])
    (found,) = find_faces(np.zeros((481, 600, 3), dtype=np.uint8), _ListedYOLO([face]))
    scale = 640 / 481
    np.testing.assert_array_equal(found.box, np.array(box, dtype=np.int64) / scale)
    np.testing.assert_array_equal(found.landmarks, face.landmarks.astype(np.int64) / scale)
    assert found.box.tolist() == [101 / scale, 121 / scale, 301 / scale, 321 / scale]
    assert not np.array_equal(found.box, np.array(box, dtype=np.float32) / scale)  # float32 would differ
