"""ParseNet face parsing: per-pixel face-part labels and the paste-back masks made from them.

The network is facexlib's ParseNet (from PSFR-GAN) with the reference's configuration (input and
output 512x512, 19 classes), loaded strictly from ``facelib/parsing_parsenet.pth`` (its widths and depth
read from the file: :func:`parsenet_shape`; the tests run a small one). Preprocessing is
the reference's (``FaceRestoreHelper.paste_faces_to_input_image`` in sczhou/CodeFormer): bilinear
resize to 512x512, RGB, scaled to [0, 1] then normalised with mean 0.5 and std 0.5 (to [-1, 1]); the
label of a pixel is the argmax over the 19 class maps. Faces are run in batches (BatchNorm is in eval
mode, so a face's labels do not depend on its batch mates).

Example::

    parser = load_face_parser("weights/facelib/parsing_parsenet.pth", device="cuda")
    masks = parser.masks(restored_faces)   # list of (512, 512) float masks in [0, 1]
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch

from codeformer.device import resolve_device
from codeformer.face.pasteback import parse_labels_to_mask
from codeformer.weights import load_state_dict, load_strict

logger = logging.getLogger(__name__)

__all__ = ["FaceParser", "ParseNetShape", "build_parsenet", "load_face_parser", "parsenet_shape", "preprocess_faces"]

PARSE_SIZE = 512  # ParseNet's input and output side (the reference's in_size = out_size = 512)
PARSE_CLASSES = 19  # CelebAMask-HQ classes: background, skin, brows, eyes, ..., hair, hat, ...
MAX_PARSE_STEPS = 8  # halvings of PARSE_SIZE a ParseNet can make (to 2 px feature maps)
DEFAULT_BATCH_SIZE = 8
# The reference normalises each RGB channel in [0, 1] with mean 0.5 and std 0.5, i.e. to [-1, 1].
_NORM_MEAN = 0.5
_NORM_STD = 0.5
_MAX_PIXEL = 255.0


def preprocess_faces(faces: Sequence[np.ndarray]) -> torch.Tensor:
    """Network input for BGR uint8 faces: (N, 3, 512, 512) float32 RGB in [-1, 1], on the CPU."""
    batch = np.empty((len(faces), PARSE_SIZE, PARSE_SIZE, 3), dtype=np.float32)  # (N, H, W, C) RGB
    for index, face in enumerate(faces):
        if not isinstance(face, np.ndarray) or face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
            got = f"{face.dtype} {face.shape}" if isinstance(face, np.ndarray) else type(face).__name__
            raise ValueError(f"face {index}: expected a (H, W, 3) BGR uint8 crop, got {got}")
        if face.shape[:2] != (PARSE_SIZE, PARSE_SIZE):
            face = cv2.resize(face, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
        # Same float32 operations, in the same order, as the reference (/255, BGR->RGB, -0.5, /0.5).
        batch[index] = face[:, :, ::-1].astype(np.float32) / _MAX_PIXEL
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    return (tensor - _NORM_MEAN) / _NORM_STD


class FaceParser:
    """A loaded ParseNet on a device."""

    def __init__(self, network: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self._network = network  # facexlib.parsing.parsenet.ParseNet, eval(), on `device`, in `dtype`
        self._device = device
        self._dtype = dtype

    @property
    def dtype(self) -> torch.dtype:
        """What the network computes in: float32, or bfloat16 (``precision`` bf16)."""
        return self._dtype

    @property
    def network(self) -> torch.nn.Module:
        return self._network

    @property
    def device(self) -> torch.device:
        return self._device

    def labels(self, faces: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE) -> list[np.ndarray]:
        """Per-pixel class labels (0..18) of BGR uint8 faces: one (512, 512) int64 array per face."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[np.ndarray] = []
        for start in range(0, len(faces), batch_size):
            inputs = preprocess_faces(faces[start:start + batch_size]).to(self._device, self._dtype)  # (B, 3, 512, 512)
            # (a channels-last network makes its activations channels-last from the first conv on)
            with torch.inference_mode():
                class_maps, _ = self._network(inputs)  # (B, 19, 512, 512); the second output is an image
                labels = class_maps.argmax(dim=1).cpu().numpy()  # (B, 512, 512) int64
            results.extend(labels)
        return results

    def masks(self, faces: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE) -> list[np.ndarray]:
        """Paste-back masks of BGR uint8 faces: one (512, 512) float array in [0, 1] per face.

        Faces that are not 512x512 are resized (bilinear) first, as the reference does.
        """
        return [parse_labels_to_mask(labels) for labels in self.labels(faces, batch_size)]


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def _prepare_for_inference(network: torch.nn.Module, device: torch.device) -> None:
    """Make a loaded ParseNet faster without changing its numbers.

    - facexlib implements its "none" norm and activation layers as ``x * 1.0``: a full copy of the
      activation each time; they become pass-throughs (the same values, exactly).
    - On CPU and CUDA the convolutions run channels-last (NHWC): about 1.3x faster on CPU. Unlike
      CodeFormer's token choice, a label only changes where two classes tie to float rounding
      (measured on real faces: no label differs from the NCHW run).
    """
    from facexlib.parsing.parsenet import NormLayer, ReluLayer

    for module in network.modules():
        if isinstance(module, NormLayer) and module.norm_type == "none":
            module.norm = _unchanged
        elif isinstance(module, ReluLayer) and not isinstance(module.func, torch.nn.Module):
            module.func = _unchanged  # the "none" activation, the only one that is not a module
    if device.type in ("cpu", "cuda"):
        network.to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class ParseNetShape:
    """What sizes a ParseNet for 512x512 faces: the defaults are the reference's (the official file's).

    ``steps``: halvings from 512 px to the body's feature maps (and doublings back); ``base_channels``:
    the first convolution's width, doubled at each halving; ``channel_range``: the (min, max) every
    block's width is clipped to; ``body_blocks``: residual blocks at the lowest resolution.
    """

    steps: int = 4
    base_channels: int = 64
    channel_range: tuple[int, int] = (32, 256)
    body_blocks: int = 10


def build_parsenet(shape: ParseNetShape = ParseNetShape()) -> torch.nn.Module:
    """facexlib's ParseNet of ``shape`` (default: the reference's configuration), randomly initialised."""
    from facexlib.parsing.parsenet import ParseNet  # facexlib's package import is slow: only when used

    return ParseNet(in_size=PARSE_SIZE, out_size=PARSE_SIZE, min_feat_size=PARSE_SIZE >> shape.steps,
                    base_ch=shape.base_channels, parsing_ch=PARSE_CLASSES, res_depth=shape.body_blocks,
                    ch_range=list(shape.channel_range))


def parsenet_shape(state: Mapping[str, torch.Tensor]) -> ParseNetShape | None:
    """The shape of the ParseNet a state dict in facexlib's layout holds (the official file: the reference's).

    The widths of the residual blocks are the clipped ones, so their smallest and largest stand for
    the clip range (the official file gives (64, 256) for the reference's (32, 256): the same network).
    None when it is no ParseNet for 512 px faces (its decoder does not lead back to 512 px, or its keys
    are another network's).
    """
    def indices(part: str) -> set[str]:
        return {key.split(".")[1] for key in state if key.startswith(part + ".")}

    first = state.get("encoder.0.conv2d.weight")
    down, up, body = indices("encoder"), indices("decoder"), indices("body")
    numbered = all(index.isdigit() for index in down | up | body)  # nn.Sequential's children: 0, 1, ...
    # Each step halves 512 px: beyond MAX_PARSE_STEPS no feature map would be left (facexlib's constructor fails).
    if first is None or first.ndim != 4 or not body or not numbered or len(down) - 1 != len(up) \
            or not 0 < len(up) <= MAX_PARSE_STEPS:
        return None
    widths = [size for key, tensor in state.items()
              if key.endswith("conv2d.weight") and key.startswith(("encoder.", "body.", "decoder."))
              and not key.startswith("encoder.0.") for size in tensor.shape[:2]]  # (out, in) of every block conv
    return ParseNetShape(steps=len(up), base_channels=int(first.shape[0]),
                         channel_range=(min(widths), max(widths)), body_blocks=len(body))


def load_face_parser(path: str | os.PathLike[str], *, device: str | torch.device,
                     dtype: torch.dtype = torch.float32) -> FaceParser:
    """ParseNet from the official file (``facelib/parsing_parsenet.pth``, resolved by :mod:`codeformer.registry`).

    ``device``: a torch device, or a name for :func:`codeformer.device.resolve_device` such as "auto".
    ``dtype``: float32 (the reference's), or bfloat16 (labels change only where classes nearly tie).
    """
    state = load_state_dict(path)
    # The official file: the reference's configuration; not a ParseNet: load_strict says so, naming the file.
    network = build_parsenet(parsenet_shape(state) or ParseNetShape())
    load_strict(network, state, path, "ParseNet")
    resolved = resolve_device(device)
    network.eval().to(resolved, dtype)
    _prepare_for_inference(network, resolved)
    return FaceParser(network, resolved, dtype)
