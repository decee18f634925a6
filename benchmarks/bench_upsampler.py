"""Benchmark: background upsampling of a 4000x3000 picture with RealESRGAN_x2plus, tile 400, on the CPU.

Running the 23-block network over 12 megapixels on a CPU takes far longer than a benchmark
should, so the two costs are measured apart, each in its own process (so each peak RSS is its own):

- network: a few 480x480 crops (one interior tile: 400 px plus 40 px of context on each side)
  through random RealESRGAN_x2plus weights in the official layout; the time per padded input
  pixel is extrapolated over the exact tile grid of the 4000x3000 picture.
- pipeline: the whole 4000x3000 picture through ``Upsampler.upscale`` with tile 400, the network
  replaced by a nearest-neighbour x2 stand-in, to measure the tiling machinery's time and peak
  memory at full size (the memory bound does not depend on the network's arithmetic).

- full (``--full``, about ten minutes on two cores): the whole 4000x3000 picture through the real
  network, tile 400, with the command line's runtime settings
  (:func:`codeformer.precision.configure_cpu_runtime`): the measured time and peak memory.

Usage, from the repository root: ``python -m benchmarks.bench_upsampler [--crops 2] [--full] [--output PATH]``
(default ``benchmarks/results/upsampler.json``).
Prints the numbers and writes them, with a machine description, as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import spandrel
import torch

from benchmarks.machine import describe_machine, peak_rss_mib, run_child, save_report
from codeformer.upsampler import Upsampler, load_upsampler, tile_grid

PICTURE_HW = (3000, 4000)  # a 12-megapixel photo, landscape
TILE, TILE_PAD = 400, 40  # the reference's --bg_tile default and RealESRGANer's tile_pad
OUTSCALE = 2  # the reference's default --upscale
# RealESRGAN_x2plus: 64 features, 23 RRDB blocks, 32 growth channels, input pixel-unshuffled by 2.
NUM_FEAT, NUM_BLOCK, GROW, UNSHUFFLE = 64, 23, 32, 2
# Real-ESRGAN initialises dense-block convs at 0.1 x Kaiming; the same keeps activations away from
# the denormal range, where CPU convolutions slow down by orders of magnitude.
BODY_INIT_SCALE = 0.1
REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def x2plus_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official RealESRGAN_x2plus tensor layout."""
    shapes: dict[str, tuple[int, ...]] = {"conv_first.weight": (NUM_FEAT, 3 * UNSHUFFLE**2, 3, 3)}
    for block in range(NUM_BLOCK):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = NUM_FEAT if conv == 5 else GROW
                shapes[f"body.{block}.rdb{rdb}.conv{conv}.weight"] = (out, NUM_FEAT + (conv - 1) * GROW, 3, 3)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[f"{name}.weight"] = (NUM_FEAT, NUM_FEAT, 3, 3)
    shapes["conv_last.weight"] = (3, NUM_FEAT, 3, 3)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        std = math.sqrt(2.0 / math.prod(shape[1:])) * (BODY_INIT_SCALE if name.startswith("body.") else 1.0)
        state[name] = torch.randn(shape, generator=generator) * std
        state[name.replace(".weight", ".bias")] = torch.zeros(shape[0])
    return state


def test_picture() -> np.ndarray:
    """The astronaut photo resized to 4000x3000, BGR uint8."""
    rgb = skimage.data.astronaut()
    return np.ascontiguousarray(cv2.resize(rgb, PICTURE_HW[::-1], interpolation=cv2.INTER_CUBIC)[:, :, ::-1])


def phase_network(crops: int) -> dict[str, object]:
    """Time interior-tile-sized crops through random RealESRGAN_x2plus; extrapolate to the picture."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "RealESRGAN_x2plus.pth"
        torch.save({"params_ema": x2plus_state_dict()}, path)
        upsampler = load_upsampler(path, device=torch.device("cpu"), tile=0)
    picture = test_picture()
    side = TILE + 2 * TILE_PAD
    upsampler.upscale(picture[:64, :64], OUTSCALE)  # warm-up: oneDNN primitive creation
    seconds = []
    for index in range(crops):
        top, left = 600 + index * side, 1200
        start = time.perf_counter()
        upsampler.upscale(picture[top:top + side, left:left + side], OUTSCALE)
        seconds.append(time.perf_counter() - start)
    per_pixel = float(np.median(seconds)) / side**2
    tiles = tile_grid(*PICTURE_HW, TILE, TILE_PAD)
    padded_pixels = sum((t.pad_y1 - t.pad_y0) * (t.pad_x1 - t.pad_x0) for t in tiles)
    picture_mp = PICTURE_HW[0] * PICTURE_HW[1] / 1e6
    return {
        "describe": upsampler.describe(),
        "crop_px": [side, side],
        "crop_seconds": [round(s, 2) for s in seconds],
        "seconds_per_interior_tile": round(per_pixel * side**2, 2),
        "tiles": len(tiles),
        "padded_pixels_over_picture_pixels": round(padded_pixels / (picture_mp * 1e6), 3),
        "extrapolated_seconds_full_picture": round(per_pixel * padded_pixels, 1),
        "extrapolated_seconds_per_megapixel": round(per_pixel * padded_pixels / picture_mp, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


class _NearestX2(torch.nn.Module):
    """Stand-in network: nearest-neighbour x2, costing nothing next to the tiling machinery."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # descriptors read device/dtype from a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")  # (N, C, 2H, 2W)


class _StubArch(spandrel.Architecture[torch.nn.Module]):
    def __init__(self) -> None:
        super().__init__(id="NearestX2Stub", detect=lambda state: False)

    def load(self, state_dict: spandrel.StateDict) -> spandrel.ImageModelDescriptor[torch.nn.Module]:
        raise NotImplementedError  # never detected; built directly below


def phase_pipeline() -> dict[str, object]:
    """The full 4000x3000 picture through tiling, conversion and output writes, stub network."""
    model = _NearestX2()
    descriptor = spandrel.ImageModelDescriptor(
        model, model.state_dict(), _StubArch(), purpose="SR", tags=[], supports_half=True,
        supports_bfloat16=True, scale=2, input_channels=3, output_channels=3,
        size_requirements=spandrel.SizeRequirements(multiple_of=4),  # as x2plus
    )
    upsampler = Upsampler(descriptor, device="cpu", tile=TILE, tile_pad=TILE_PAD)
    picture = test_picture()
    before = peak_rss_mib()
    start = time.perf_counter()
    result = upsampler.upscale(picture, OUTSCALE)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return {
        "seconds_full_picture": round(seconds, 2),
        "input_mib": round(picture.nbytes / MIB, 1),
        "output_mib": round(result.nbytes / MIB, 1),
        "peak_rss_before_upscale_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_rss_growth_mib": round(peak - before, 1),
        # What a whole-picture float32 copy of the output alone would have cost.
        "full_float32_output_would_be_mib": round(result.size * 4 / MIB, 1),
    }


def phase_full() -> dict[str, object]:
    """The whole 4000x3000 picture through random RealESRGAN_x2plus weights, tile 400, as the command runs."""
    from codeformer.precision import configure_cpu_runtime

    settings = configure_cpu_runtime()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "RealESRGAN_x2plus.pth"
        torch.save({"params_ema": x2plus_state_dict()}, path)
        upsampler = load_upsampler(path, device=torch.device("cpu"), tile=TILE, tile_pad=TILE_PAD)
    picture = test_picture()
    start = time.perf_counter()
    result = upsampler.upscale(picture, OUTSCALE)
    seconds = time.perf_counter() - start
    return {
        "describe": upsampler.describe(),
        "runtime_settings": settings,
        "output_hw": list(result.shape[:2]),
        "seconds_full_picture": round(seconds, 1),
        "seconds_per_megapixel": round(seconds / (PICTURE_HW[0] * PICTURE_HW[1] / 1e6), 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def machine() -> dict[str, object]:
    return {**describe_machine(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)}


def run_phase(name: str, crops: int = 0) -> dict[str, object]:
    """Run one phase in a fresh interpreter so its peak RSS is its own."""
    result = run_child("benchmarks.bench_upsampler", {"phase": name, "crops": crops})
    if "error" in result:
        raise SystemExit(f"phase {name} failed: {result['error']}")
    return result


def _child(config: dict[str, object]) -> dict[str, object]:
    if config["phase"] == "full":
        return phase_full()
    if config["phase"] == "network":
        return phase_network(int(config["crops"]))
    return phase_pipeline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=2, help="interior-tile crops timed through the network")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "upsampler.json")
    parser.add_argument("--full", action="store_true",
                        help="also run the whole picture through the real network (about ten minutes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    results = {
        "benchmark": "upsampler",
        "picture_hw": list(PICTURE_HW),
        "tile": TILE,
        "tile_pad": TILE_PAD,
        "outscale": OUTSCALE,
        "device": "cpu",
        "machine": machine(),
        "pipeline_stub_network": run_phase("pipeline"),
        "network_realesrgan_x2plus_random": run_phase("network", args.crops),
    }
    if args.full:
        results["full_picture_realesrgan_x2plus_random"] = run_phase("full")
    print(json.dumps(results, indent=2))
    save_report(results, args.output)


if __name__ == "__main__":
    main()
