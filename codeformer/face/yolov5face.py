"""YOLOv5-face detectors (``YOLOv5l``, ``YOLOv5n``): boxes and 5 landmarks, run as the reference runs them.

The networks are YOLOv5-face (Qi et al., "YOLO5Face: Why Reinventing a Face Detector", 2021) in the
two configurations sczhou/CodeFormer ships (``facelib/detection/yolov5face/models/yolov5l.yaml`` and
``yolov5n.yaml``) and offers as ``--detection_model YOLOv5l`` / ``YOLOv5n``. Parameter names match the
official files ``facelib/yolov5l-face.pth`` / ``facelib/yolov5n-face.pth`` (plain state dicts of the
unfused detection model: every Conv keeps its BatchNorm, with PyTorch's default eps 1e-5 because the
reference never changes it) so that they load strictly.

The recipe is the reference's ``YoloDetector.detect_faces`` with the defaults the reference uses
(``facelib/detection/yolov5face/face_detector.py``), so that, with the same weights, our boxes and
landmarks are the reference's:

1. Colour: the BGR picture is converted to RGB.
2. Letterbox: the target side is the long side rounded up to a multiple of the largest stride (32);
   the picture is resized (bilinear, up only: the long side becomes the target) to
   ``round(side * target / long side)``, then padded with grey (114) by ``(target - resized) % 64``
   on each axis, split ``floor`` before / ``ceil`` after. Both sides end as multiples of 32, the long
   one equal to the target. (The reference's ``target_size`` down-scaling is off: ``None``.)
3. Input: uint8 to float32 / 255, (B, 3, H, W) in channels-last memory (a transposed NumPy view,
   as the reference builds it).
4. Head decoding, per level (strides 8, 16, 32; three anchors each) and grid cell (gx, gy), with
   ``s = sigmoid``: centre ``(2 s(t) - 0.5 + g) * stride``, size ``(2 s(t))**2 * anchor``,
   objectness and class ``s(t)``, and each landmark ``t * anchor + g * stride`` (raw, no sigmoid).
5. Selection: objectness > 0.7, then ``objectness * class`` > 0.7, centre/size to corners, NMS at
   IoU 0.5 (torchvision's, highest score first, no limit on the count).
6. Back to the picture: subtract the padding and divide by the gain ``min(H'/H, W'/W)`` (both
   recomputed from the shapes), clip to the picture; then each coordinate becomes
   ``int(float32(v / side) * side)`` (truncated to whole pixels, with the reference's float32
   round trip); faces whose integer box is less than 10 px tall are dropped.

Landmarks come as left eye, right eye, nose, left and right mouth corner, left/right as seen in the
picture (WIDER FACE's RetinaFace annotations): the FFHQ template, as for RetinaFace.

Around the detector, the reference's face helper (``FaceRestoreHelper.get_face_landmarks_5(resize=640,
eye_dist_threshold=5)``), which :func:`codeformer.face.detection.find_faces` follows:

7. The picture (short side already raised to 512) is resized so that its short side is 640, sides
   truncated to integers (bilinear up, area down), and detected as above: the 10 px minimum height
   and the truncation to whole pixels apply in the resized copy's pixels.
8. The whole-pixel rows are divided by the scale in float64 (:attr:`YOLOv5FaceDetector.row_dtype`).
9. The eye-distance filter reads the rows one column off: it keeps faces with
   ``norm(left eye y - right eye y, right eye x - nose x) >= 5`` in the working picture's pixels
   (:attr:`YOLOv5FaceDetector.shifted_eye_distance`), not the distance between the eyes.

Deliberate difference: the reference's result rows carry the box's x1 where a score belongs; a
:class:`DetectedFace` carries the detector's confidence (objectness x class probability).

Example::

    detector = load_yolov5face(path, "YOLOv5l", device=torch.device("cuda"))
    faces = detector.detect(picture)                # picture: (H, W, 3) BGR uint8
    per_frame = detector.detect_batch(frames)       # same-size frames, one forward pass
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Callable, Mapping, Sequence, Union

import cv2
import numpy as np
import torch
import torchvision
from torch import nn

from codeformer.errors import CodeFormerError
from codeformer.face.detection import TEMPLATE_FFHQ, DetectedFace
from codeformer.weights import load_state_dict, load_strict

__all__ = [
    "CONF_THRESHOLD",
    "IOU_THRESHOLD",
    "MIN_FACE_HEIGHT",
    "YOLOV5FACE_VARIANTS",
    "YOLOv5Face",
    "YOLOv5FaceDetector",
    "build_yolov5face",
    "decode_outputs",
    "letterbox",
    "load_yolov5face",
    "scale_to_picture",
    "select_faces",
    "to_reference_pixels",
]

# ------------------------------------------------------------------------------------------------
# Constants

YOLOV5FACE_VARIANTS: tuple[str, ...] = ("YOLOv5l", "YOLOv5n")  # the architectures of the two official files

# `YoloDetector.detect_faces(conf_thres=0.7, iou_thres=0.5)`: the reference never overrides them.
CONF_THRESHOLD = 0.7
IOU_THRESHOLD = 0.5
# `YoloDetector(min_face=10)`: boxes shorter than this (integer pixels of the given picture) are dropped.
MIN_FACE_HEIGHT = 10

# Output strides of the three detection levels (P3, P4, P5). The reference measures them with a
# forward pass of a 128x128 picture; both configurations give the same.
STRIDES: tuple[int, int, int] = (8, 16, 32)
MAX_STRIDE = STRIDES[-1]
# Anchors (width, height) in input pixels per level, from both yaml files; small faces at stride 8.
ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((4, 5), (8, 10), (13, 16)),
    ((23, 29), (43, 55), (73, 105)),
    ((146, 217), (231, 300), (335, 433)),
)
NUM_ANCHORS = 3  # per level
NUM_LANDMARKS = 5
NUM_CLASSES = 1  # "face"
# Per anchor: box (cx, cy, w, h), objectness, 5 (x, y) landmarks, class probability.
OUTPUTS_PER_ANCHOR = 4 + 1 + 2 * NUM_LANDMARKS + NUM_CLASSES  # 16

# Column layout of a decoded prediction row (and of a selected row, where 0:4 become x1, y1, x2, y2,
# 4 becomes the confidence and 15 the class index).
_BOX = slice(0, 4)
_OBJECTNESS = 4
_LANDMARKS = slice(5, 5 + 2 * NUM_LANDMARKS)
_CLASS = 15
_X_COLUMNS = [0, 2, 5, 7, 9, 11, 13]  # box x1, x2 and the landmarks' x
_Y_COLUMNS = [1, 3, 6, 8, 10, 12, 14]

# The reference's `letterbox(auto=True)` pads by (target - resized) % 64, not % 32: the padded side
# keeps the target's remainder modulo 64, so it is a multiple of 32 but may be shorter than the target.
LETTERBOX_PAD_MULTIPLE = 64
LETTERBOX_FILL = (114, 114, 114)  # YOLOv5's grey padding
_MAX_PIXEL = 255.0

SPP_KERNELS = (3, 5, 7)  # yolov5l.yaml's SPP pool sizes (YOLOv5's default is 5, 9, 13)

# ------------------------------------------------------------------------------------------------
# Blocks


class ConvBnAct(nn.Module):
    """Convolution (no bias), BatchNorm, SiLU: YOLOv5's ``Conv``, the unit of every block."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, padding: int | None = None
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding  # "same" for odd kernels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)
        return self.act(self.bn(self.conv(x)))


class StemBlock(nn.Module):
    """Stride-4 stem: a stride-2 conv, then a conv path and a max-pool path, concatenated and mixed."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.stem_1 = ConvBnAct(in_channels, out_channels, 3, 2)
        self.stem_2a = ConvBnAct(out_channels, out_channels // 2, 1, 1, 0)
        self.stem_2b = ConvBnAct(out_channels // 2, out_channels, 3, 2, 1)
        self.stem_2p = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.stem_3 = ConvBnAct(out_channels * 2, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/4, W/4)
        half = self.stem_1(x)  # (B, C_out, H/2, W/2)
        convolved = self.stem_2b(self.stem_2a(half))  # (B, C_out, H/4, W/4)
        pooled = self.stem_2p(half)  # (B, C_out, H/4, W/4)
        return self.stem_3(torch.cat((convolved, pooled), 1))


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv at constant width, with a residual connection when ``shortcut``."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(channels, channels, 1)
        self.cv2 = ConvBnAct(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C3(nn.Module):
    """CSP block with three convs: half the width through ``depth`` bottlenecks, half straight, then mixed."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = out_channels // 2  # YOLOv5's expansion 0.5
        self.cv1 = ConvBnAct(in_channels, hidden)
        self.cv2 = ConvBnAct(in_channels, hidden)
        self.cv3 = ConvBnAct(2 * hidden, out_channels)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling: stride-1 max-pools of several sizes, concatenated with their input."""

    def __init__(self, in_channels: int, out_channels: int, kernels: Sequence[int] = SPP_KERNELS) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = ConvBnAct(in_channels, hidden)
        self.cv2 = ConvBnAct(hidden * (len(kernels) + 1), out_channels)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [pool(x) for pool in self.m], 1))


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (the reference's operations, in its order)."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)  # (B, g, C/g, H, W)
    return x.transpose(1, 2).contiguous().view(batch, -1, height, width)  # (B, C, H, W)


class ShuffleV2Block(nn.Module):
    """ShuffleNet V2 unit (SiLU): stride 1 splits the channels, stride 2 runs two branches on all of them."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV2Block stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 ShuffleV2Block keeps its width")
        self.stride = stride
        branch = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),  # depthwise
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.SiLU(),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.SiLU(),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),  # depthwise
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)
        if self.stride == 1:
            kept, processed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(processed)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return _channel_shuffle(out, 2)


class Concat(nn.Module):
    """Concatenate feature maps along the channels."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:  # [(B, C_i, H, W)] -> (B, sum C_i, H, W)
        return torch.cat(xs, 1)


def _upsample() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="nearest")


class FaceDetectHead(nn.Module):
    """One 1x1 conv per level giving ``OUTPUTS_PER_ANCHOR`` raw values for each of its anchors.

    Buffers as in the official files: ``anchors`` (levels, anchors, 2) in grid cells (pixels / stride,
    used in training only) and ``anchor_grid`` (levels, 1, anchors, 1, 1, 2) in pixels, which the
    decoding reads.
    """

    def __init__(self, in_channels: Sequence[int]) -> None:
        super().__init__()
        pixels = torch.tensor(ANCHORS, dtype=torch.float32)  # (levels, anchors, 2)
        strides = torch.tensor(STRIDES, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("anchors", pixels / strides)
        self.register_buffer("anchor_grid", pixels.clone().view(len(STRIDES), 1, NUM_ANCHORS, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, NUM_ANCHORS * OUTPUTS_PER_ANCHOR, 1) for c in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw outputs per level: (B, C_i, ny, nx) -> (B, anchors, ny, nx, OUTPUTS_PER_ANCHOR)."""
        outputs = []
        for conv, feature in zip(self.m, features):
            raw = conv(feature)  # (B, anchors * 16, ny, nx)
            batch, _, ny, nx = raw.shape
            raw = raw.view(batch, NUM_ANCHORS, OUTPUTS_PER_ANCHOR, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            outputs.append(raw)
        return outputs


# ------------------------------------------------------------------------------------------------
# Network

_PREVIOUS = -1  # a layer's input is the previous layer's output (the yaml's `from: -1`)
_Source = Union[int, tuple[int, ...]]  # layer index(es); `Union`: `int | ...` needs Python 3.10 at run time


def _yolov5l_layers() -> list[tuple[_Source, nn.Module]]:
    """yolov5l.yaml (depth and width multiples 1.0): C3 backbone with SPP, PAN neck, widths 256/512/1024."""
    return [
        (_PREVIOUS, StemBlock(3, 64)),  # 0: /4
        (_PREVIOUS, C3(64, 128, 3)),  # 1
        (_PREVIOUS, ConvBnAct(128, 256, 3, 2)),  # 2: /8
        (_PREVIOUS, C3(256, 256, 9)),  # 3: backbone P3
        (_PREVIOUS, ConvBnAct(256, 512, 3, 2)),  # 4: /16
        (_PREVIOUS, C3(512, 512, 9)),  # 5: backbone P4
        (_PREVIOUS, ConvBnAct(512, 1024, 3, 2)),  # 6: /32
        (_PREVIOUS, SPP(1024, 1024)),  # 7
        (_PREVIOUS, C3(1024, 1024, 3, shortcut=False)),  # 8
        (_PREVIOUS, ConvBnAct(1024, 512)),  # 9: head P5 lateral
        (_PREVIOUS, _upsample()),  # 10: /16
        ((_PREVIOUS, 5), Concat()),  # 11: 512 + 512
        (_PREVIOUS, C3(1024, 512, 3, shortcut=False)),  # 12
        (_PREVIOUS, ConvBnAct(512, 256)),  # 13: head P4 lateral
        (_PREVIOUS, _upsample()),  # 14: /8
        ((_PREVIOUS, 3), Concat()),  # 15: 256 + 256
        (_PREVIOUS, C3(512, 256, 3, shortcut=False)),  # 16: P3 output (small faces)
        (_PREVIOUS, ConvBnAct(256, 256, 3, 2)),  # 17: /16
        ((_PREVIOUS, 13), Concat()),  # 18: 256 + 256
        (_PREVIOUS, C3(512, 512, 3, shortcut=False)),  # 19: P4 output
        (_PREVIOUS, ConvBnAct(512, 512, 3, 2)),  # 20: /32
        ((_PREVIOUS, 9), Concat()),  # 21: 512 + 512
        (_PREVIOUS, C3(1024, 1024, 3, shortcut=False)),  # 22: P5 output (large faces)
        ((16, 19, 22), FaceDetectHead((256, 512, 1024))),  # 23
    ]


def _shuffle_stage(channels: int, repeats: int) -> nn.Sequential:
    return nn.Sequential(*(ShuffleV2Block(channels, channels, 1) for _ in range(repeats)))


def _yolov5n_layers() -> list[tuple[_Source, nn.Module]]:
    """yolov5n.yaml: ShuffleNet V2 backbone, PAN neck 128 wide throughout."""
    return [
        (_PREVIOUS, StemBlock(3, 32)),  # 0: /4
        (_PREVIOUS, ShuffleV2Block(32, 128, 2)),  # 1: /8
        (_PREVIOUS, _shuffle_stage(128, 3)),  # 2: backbone P3
        (_PREVIOUS, ShuffleV2Block(128, 256, 2)),  # 3: /16
        (_PREVIOUS, _shuffle_stage(256, 7)),  # 4: backbone P4
        (_PREVIOUS, ShuffleV2Block(256, 512, 2)),  # 5: /32
        (_PREVIOUS, _shuffle_stage(512, 3)),  # 6
        (_PREVIOUS, ConvBnAct(512, 128)),  # 7: head P5 lateral
        (_PREVIOUS, _upsample()),  # 8: /16
        ((_PREVIOUS, 4), Concat()),  # 9: 128 + 256
        (_PREVIOUS, C3(384, 128, 1, shortcut=False)),  # 10
        (_PREVIOUS, ConvBnAct(128, 128)),  # 11: head P4 lateral
        (_PREVIOUS, _upsample()),  # 12: /8
        ((_PREVIOUS, 2), Concat()),  # 13: 128 + 128
        (_PREVIOUS, C3(256, 128, 1, shortcut=False)),  # 14: P3 output (small faces)
        (_PREVIOUS, ConvBnAct(128, 128, 3, 2)),  # 15: /16
        ((_PREVIOUS, 11), Concat()),  # 16: 128 + 128
        (_PREVIOUS, C3(256, 128, 1, shortcut=False)),  # 17: P4 output
        (_PREVIOUS, ConvBnAct(128, 128, 3, 2)),  # 18: /32
        ((_PREVIOUS, 7), Concat()),  # 19: 128 + 128
        (_PREVIOUS, C3(256, 128, 1, shortcut=False)),  # 20: P5 output (large faces)
        ((14, 17, 20), FaceDetectHead((128, 128, 128))),  # 21
    ]


_VARIANT_LAYERS: Mapping[str, Callable[[], list[tuple[_Source, nn.Module]]]] = {
    "YOLOv5l": _yolov5l_layers,
    "YOLOv5n": _yolov5n_layers,
}


class YOLOv5Face(nn.Module):
    """A YOLOv5-face detection network: layers ``model.0`` ... ``model.N`` (the last one the head).

    ``forward`` takes (B, 3, H, W) float RGB in [0, 1], H and W multiples of 32, and returns the
    decoded predictions (B, P, 16) of :func:`decode_outputs` for all P anchors of all levels.
    """

    def __init__(self, layers: Sequence[tuple[_Source, nn.Module]]) -> None:
        super().__init__()
        if not layers or not isinstance(layers[-1][1], FaceDetectHead):
            raise ValueError("the last layer of a YOLOv5Face must be its FaceDetectHead")
        self.model = nn.ModuleList(module for _, module in layers)
        self._sources: tuple[_Source, ...] = tuple(source for source, _ in layers)
        # Outputs that a later layer reads by index (not just the next layer): only these are kept.
        self._kept = frozenset(
            index for source in self._sources for index in ((source,) if isinstance(source, int) else source)
            if index != _PREVIOUS
        )

    @property
    def head(self) -> FaceDetectHead:
        head = self.model[-1]
        assert isinstance(head, FaceDetectHead)  # checked in __init__
        return head

    def raw_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Undecoded head outputs per level: (B, anchors, H/stride, W/stride, 16)."""
        height, width = x.shape[-2:]
        if height % MAX_STRIDE or width % MAX_STRIDE:
            raise ValueError(f"YOLOv5Face needs sides that are multiples of {MAX_STRIDE}, got {height}x{width}")
        kept: dict[int, torch.Tensor] = {}
        current: torch.Tensor | list[torch.Tensor] = x
        for index, (source, layer) in enumerate(zip(self._sources, self.model)):
            if isinstance(source, int):
                inputs = current if source == _PREVIOUS else kept[source]
            else:
                inputs = [current if i == _PREVIOUS else kept[i] for i in source]
            current = layer(inputs)
            if index in self._kept:
                kept[index] = current
        assert isinstance(current, list)  # the head returns one tensor per level
        return current

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, P, 16)
        return decode_outputs(self.raw_outputs(x), self.head.anchor_grid)


def build_yolov5face(variant: str) -> YOLOv5Face:
    """A randomly initialised YOLOv5-face network, ``"YOLOv5l"`` or ``"YOLOv5n"``, in eval mode.

    Its state dict has the names and shapes of the official file. Example::

        network = build_yolov5face("YOLOv5n")
        predictions = network(torch.rand(1, 3, 64, 64))   # (1, 3 * (8*8 + 4*4 + 2*2), 16)
    """
    if variant not in _VARIANT_LAYERS:
        raise CodeFormerError(f"unknown YOLOv5-face variant {variant!r}: choose one of {', '.join(YOLOV5FACE_VARIANTS)}")
    return YOLOv5Face(_VARIANT_LAYERS[variant]()).eval()


# ------------------------------------------------------------------------------------------------
# Pure steps of a detection: letterbox, decode, select, scale back


def letterbox(image: np.ndarray, *, stride: int = MAX_STRIDE) -> np.ndarray:
    """The reference's letterbox of an (H, W, 3) uint8 picture (see the module docstring, step 2)."""
    height, width = image.shape[:2]
    target = math.ceil(max(height, width) / stride) * stride
    ratio = min(target / height, target / width)  # >= 1: only ever enlarges
    new_width, new_height = round(width * ratio), round(height * ratio)
    pad_width = (target - new_width) % LETTERBOX_PAD_MULTIPLE
    pad_height = (target - new_height) % LETTERBOX_PAD_MULTIPLE
    if (new_width, new_height) != (width, height):
        image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    top, left = pad_height // 2, pad_width // 2  # the odd pixel goes below / to the right
    return cv2.copyMakeBorder(
        image, top, pad_height - top, left, pad_width - left, cv2.BORDER_CONSTANT, value=LETTERBOX_FILL
    )


def _cell_grid(ny: int, nx: int, device: torch.device) -> torch.Tensor:
    """(1, 1, ny, nx, 2) float32 cell indices (gx, gy)."""
    gy, gx = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
    return torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2).float()


def decode_outputs(
    raw: Sequence[torch.Tensor], anchor_grid: torch.Tensor, strides: Sequence[int] = STRIDES
) -> torch.Tensor:
    """Decode raw head outputs into input-pixel predictions, the reference's way (docstring, step 4).

    ``raw[i]``: (B, anchors, ny, nx, 16) of level i; ``anchor_grid``: (levels, 1, anchors, 1, 1, 2) in
    pixels. Returns (B, P, 16) rows ``cx, cy, w, h, objectness, 5 x (x, y) landmarks, class``; rows are
    ordered level, anchor, gy, gx.
    """
    levels = []
    for level, stride in zip(raw, strides):
        _, _, ny, nx, _ = level.shape
        index = len(levels)
        grid = _cell_grid(ny, nx, level.device)  # (1, 1, ny, nx, 2)
        anchor = anchor_grid[index]  # (1, anchors, 1, 1, 2)
        offset = grid * stride  # cell corner in pixels
        probabilities = level[..., [0, 1, 2, 3, _OBJECTNESS, _CLASS]].sigmoid()
        centre = (probabilities[..., 0:2] * 2.0 - 0.5 + grid) * stride
        size = (probabilities[..., 2:4] * 2) ** 2 * anchor
        points = [level[..., c:c + 2] * anchor + offset for c in range(_LANDMARKS.start, _LANDMARKS.stop, 2)]
        decoded = torch.cat((centre, size, probabilities[..., 4:5], *points, probabilities[..., 5:6]), -1)
        levels.append(decoded.view(decoded.shape[0], -1, OUTPUTS_PER_ANCHOR))  # (B, anchors*ny*nx, 16)
    return torch.cat(levels, 1)


def select_faces(
    predictions: torch.Tensor, *, conf_threshold: float = CONF_THRESHOLD, iou_threshold: float = IOU_THRESHOLD
) -> torch.Tensor:
    """Thresholds and NMS on one picture's decoded predictions (docstring, step 5).

    ``predictions``: (P, 16) from :func:`decode_outputs`. Returns (K, 16) rows ``x1, y1, x2, y2,
    confidence, 5 x (x, y) landmarks, class index (0)``, highest confidence first.
    """
    candidates = predictions[predictions[:, _OBJECTNESS] > conf_threshold]  # (M, 16)
    confidence = candidates[:, _CLASS:_CLASS + 1] * candidates[:, _OBJECTNESS:_OBJECTNESS + 1]  # (M, 1)
    centre, size = candidates[:, 0:2], candidates[:, 2:4]
    corners = torch.cat((centre - size / 2, centre + size / 2), 1)  # (M, 4) x1, y1, x2, y2
    rows = torch.cat((corners, confidence, candidates[:, _LANDMARKS], torch.zeros_like(confidence)), 1)
    rows = rows[confidence.view(-1) > conf_threshold]
    # One class: the reference's per-class box offset (class index x 4096) is 0 and changes nothing.
    keep = torchvision.ops.nms(rows[:, _BOX], rows[:, _OBJECTNESS], iou_threshold)
    return rows[keep]


def scale_to_picture(
    rows: torch.Tensor, network_size: tuple[int, int], picture_size: tuple[int, int]
) -> torch.Tensor:
    """Boxes and landmarks of :func:`select_faces` rows mapped from the letterboxed input to the picture.

    ``network_size`` and ``picture_size`` are (height, width). Float32 operations as the reference's
    ``scale_coords`` / ``scale_coords_landmarks``: minus the padding, divided by the gain, clipped.
    """
    (net_height, net_width), (height, width) = network_size, picture_size
    gain = min(net_height / height, net_width / width)
    pad_x = (net_width - width * gain) / 2
    pad_y = (net_height - height * gain) / 2
    scaled = rows.clone()
    scaled[:, _X_COLUMNS] = ((scaled[:, _X_COLUMNS] - pad_x) / gain).clamp(0, width)
    scaled[:, _Y_COLUMNS] = ((scaled[:, _Y_COLUMNS] - pad_y) / gain).clamp(0, height)
    return scaled


def to_reference_pixels(coordinates: torch.Tensor, picture_size: tuple[int, int]) -> np.ndarray:
    """(K, 2n) float32 (x, y, x, y, ...) as the reference's integers: ``int(float32(v / side) * side)``.

    The reference normalises by the picture size in float32, then multiplies back in float64 and
    truncates, so that 7.0 may become 6; we take the same steps for the same integers.
    """
    height, width = picture_size
    sides = torch.tensor([width, height] * (coordinates.shape[1] // 2))  # int64, as the reference's gain
    normalised = (coordinates / sides).numpy().astype(np.float64)  # float32 division, then exact widening
    return np.trunc(normalised * sides.numpy())


# ------------------------------------------------------------------------------------------------
# Detector


def _check_picture(image: np.ndarray) -> np.ndarray:
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3
            or image.shape[0] == 0 or image.shape[1] == 0):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a (H, W, 3) BGR uint8 picture, got {got}")
    return np.ascontiguousarray(image)


def _network_input(letterboxed: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) float32 RGB in [0, 1] from letterboxed (H, W, 3) RGB uint8 pictures.

    Built as the reference builds it: a transposed view of the (B, H, W, 3) stack, so channels-last in
    memory; the convolutions then run the same kernels and round the same way.
    """
    stacked = np.stack(letterboxed).transpose(0, 3, 1, 2)  # (B, 3, H, W) view of (B, H, W, 3)
    return torch.from_numpy(stacked).to(device).float() / _MAX_PIXEL


def _faces_from_rows(rows: torch.Tensor, picture_size: tuple[int, int], min_face: int) -> list[DetectedFace]:
    """DetectedFaces from scaled-back rows (CPU), in whole pixels, without those under ``min_face`` tall."""
    boxes = to_reference_pixels(rows[:, _BOX], picture_size)  # (K, 4)
    landmarks = to_reference_pixels(rows[:, _LANDMARKS], picture_size)  # (K, 10)
    scores = rows[:, _OBJECTNESS].tolist()
    return [
        DetectedFace(box=box, score=score, landmarks=points.reshape(NUM_LANDMARKS, 2))
        for box, score, points in zip(boxes, scores, landmarks)
        if box[3] - box[1] >= min_face
    ]


class YOLOv5FaceDetector:
    """A YOLOv5-face network with the reference's pre- and post-processing (a :class:`FaceDetector`)."""

    template_name = TEMPLATE_FFHQ
    # How the reference's face helper treats this detector's result rows (read by find_faces):
    # they are whole pixels (int64), so mapping them back from the detection copy is a float64
    # division; and its eye-distance filter reads them one column off (see the module docstring).
    row_dtype = np.int64
    shifted_eye_distance = True

    def __init__(
        self,
        name: str,
        network: nn.Module,
        *,
        conf_threshold: float = CONF_THRESHOLD,
        iou_threshold: float = IOU_THRESHOLD,
        min_face: int = MIN_FACE_HEIGHT,
    ) -> None:
        self.name = name
        self._network = network  # YOLOv5Face (or any module with its forward contract), eval(), on its device
        self._conf_threshold = conf_threshold
        self._iou_threshold = iou_threshold
        self._min_face = min_face

    @property
    def network(self) -> nn.Module:
        return self._network

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self._network.parameters(), self._network.buffers())).device

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in a (H, W, 3) BGR uint8 picture, highest confidence first, in its pixel coordinates."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces in each of several same-size BGR uint8 pictures (video frames), in one forward pass.

        Each frame's result is what :meth:`detect` returns for it (up to float rounding in the batched
        convolutions). The whole batch is run at once: split long videos into chunks.
        """
        pictures = [_check_picture(image) for image in images]
        if not pictures:
            return []
        size = pictures[0].shape[:2]
        if any(picture.shape[:2] != size for picture in pictures):
            shapes = sorted({f"{p.shape[1]}x{p.shape[0]}" for p in pictures})
            raise ValueError(f"detect_batch needs pictures of one size, got {', '.join(shapes)}")
        letterboxed = [letterbox(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)) for picture in pictures]
        inputs = _network_input(letterboxed, self.device)  # (B, 3, H', W')
        network_size = (inputs.shape[2], inputs.shape[3])
        results = []
        with torch.inference_mode():
            predictions = self._network(inputs)  # (B, P, 16)
            for frame_predictions in predictions:
                rows = select_faces(
                    frame_predictions, conf_threshold=self._conf_threshold, iou_threshold=self._iou_threshold
                ).cpu()
                rows = scale_to_picture(rows, network_size, size)
                results.append(_faces_from_rows(rows, size, self._min_face))
        return results


def load_yolov5face(path: str | os.PathLike[str], name: str, *, device: torch.device | str) -> YOLOv5FaceDetector:
    """A ready YOLOv5-face detector, ``"YOLOv5l"`` or ``"YOLOv5n"``, from its official file.

    The file (``facelib/yolov5l-face.pth`` or ``facelib/yolov5n-face.pth``, resolved by
    :mod:`codeformer.registry`) must match the network exactly. Example::

        detector = load_yolov5face("weights/facelib/yolov5n-face.pth", "YOLOv5n", device="cpu")
        faces = detector.detect(cv2.imread("group.jpg"))
    """
    state = load_state_dict(path)
    network = build_yolov5face(name)
    load_strict(network, state, path, f"YOLOv5-face ({name})")
    network.eval().to(torch.device(device))
    return YOLOv5FaceDetector(name, network)
