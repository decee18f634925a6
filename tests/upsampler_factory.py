"""Random-initialised Real-ESRGAN (RRDBNet) checkpoints for tests, in the official layout or smaller.

The last layer is calibrated so outputs spread around mid-grey instead of clipping, which makes
value comparisons meaningful. Small variants (``num_feat=SMALL_FEAT``, one block) run in
milliseconds on a CPU; spandrel detects them like the real thing.
"""

from __future__ import annotations

import math
from pathlib import Path

import spandrel
import torch

# Real-ESRGAN RRDBNet hyperparameters of RealESRGAN_x2plus.pth.
X2PLUS_FEAT, X2PLUS_BLOCKS, X2PLUS_UNSHUFFLE = 64, 23, 2
# Dense-block growth channels: fixed at 32 in every Real-ESRGAN model (and in spandrel).
GROW_CHANNELS = 32
# Kaiming-normal gain for LeakyReLU-ish layers, and Real-ESRGAN's 0.1 scale for dense-block convs.
KAIMING_GAIN = 2.0
BODY_INIT_SCALE = 0.1
# Target spread of the random networks' outputs in [0, 1] (centred at 0.5): varied but rarely clipped.
OUTPUT_STD = 0.15
# Small networks for everything that is not about the official layout: fast on 2 CPU cores.
SMALL_FEAT = 16


def rrdbnet_layout(
    *, num_feat: int, num_block: int, unshuffle: int, in_ch: int = 3, out_ch: int = 3
) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of Real-ESRGAN's RRDBNet (``unshuffle`` 2 -> x2, 4 -> x1, 1 -> x4)."""
    layout: dict[str, tuple[int, ...]] = {
        "conv_first.weight": (num_feat, in_ch * unshuffle**2, 3, 3),
        "conv_first.bias": (num_feat,),
    }
    for block in range(num_block):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = num_feat if conv == 5 else GROW_CHANNELS
                layout[f"body.{block}.rdb{rdb}.conv{conv}.weight"] = (out, num_feat + (conv - 1) * GROW_CHANNELS, 3, 3)
                layout[f"body.{block}.rdb{rdb}.conv{conv}.bias"] = (out,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layout[f"{name}.weight"] = (num_feat, num_feat, 3, 3)
        layout[f"{name}.bias"] = (num_feat,)
    layout["conv_last.weight"] = (out_ch, num_feat, 3, 3)
    layout["conv_last.bias"] = (out_ch,)
    return layout


def random_state_dict(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Kaiming-initialised weights whose outputs are calibrated to mean 0.5, std OUTPUT_STD."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in layout.items():
        if name.endswith(".bias"):
            state[name] = torch.zeros(shape)
            continue
        std = math.sqrt(KAIMING_GAIN / math.prod(shape[1:]))
        std *= BODY_INIT_SCALE if name.startswith("body.") else 1.0
        state[name] = torch.randn(shape, generator=generator) * std
    model = spandrel.ModelLoader().load_from_state_dict(dict(state)).model
    channels = layout["conv_last.weight"][0]  # input channels == output channels in every layout here
    probe = torch.rand(1, channels, 32, 32, generator=generator)  # (1, C, 32, 32)
    with torch.inference_mode():
        raw = model(probe)  # (1, C_out, h, w), unclamped
    mean, spread = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3))  # (C_out,)
    gain = OUTPUT_STD / spread
    state["conv_last.weight"] = state["conv_last.weight"] * gain[:, None, None, None]
    state["conv_last.bias"] = 0.5 - gain * mean
    return state


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], key: str = "params_ema") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: state}, path)
    return path
