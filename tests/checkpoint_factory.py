"""Random-initialised checkpoints in the official layouts, for tests (the real weights are not downloaded).

Every file holds ``{"params_ema": state_dict}`` with exactly the tensor names and shapes of the
official file (``tests/test_archs.py`` checks the layouts against the official ones), so the loaders
treat it like the real thing. The values are random but spread enough for a meaningful forward pass:
different faces pick different codes, AdaIN and the fusion blocks change the output.

A CodeFormer file is about 370 MB and takes a few seconds to write: write each once per test
session and share it, with a session-scoped fixture built on the cached helpers::

    from checkpoint_factory import cached_codeformer_checkpoint

    @pytest.fixture(scope="session")
    def codeformer_pth(tmp_path_factory):
        return cached_codeformer_checkpoint(tmp_path_factory, "colorization")

The cached helpers write into one folder under pytest's session temporary directory, so every test
module asking for the same (variant, seed) gets the same file.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

import pytest
import torch
from torch import nn

from codeformer._atomic import atomic_path
from codeformer.archs import CodeFormer, CodeFormerConfig, VQAutoEncoder

WRAPPER_KEY = "params_ema"  # what BasicSR saves the EMA weights under; the official files use it

# The official files' hyperparameters, by variant name.
VARIANTS: Mapping[str, CodeFormerConfig] = {
    "codeformer": CodeFormerConfig(),
    "colorization": CodeFormerConfig(connect_list=("32", "64", "128")),
    "inpainting": CodeFormerConfig(codebook_size=512, connect_list=("32", "64", "128")),
}
# File name of each variant in the official release.
OFFICIAL_NAMES: Mapping[str, str] = {
    "codeformer": "codeformer.pth",
    "colorization": "codeformer_colorization.pth",
    "inpainting": "codeformer_inpainting.pth",
}

# Spreads of the random values. Codebook entries and position embeddings are O(1), like the
# encoder's output and the LayerNorm'ed tokens they meet, so nearest codes and predicted tokens
# depend on the input and the position; weights keep activations O(1) (std 1/sqrt(fan_in)).
CODEBOOK_STD = 1.0
POSITION_STD = 1.0
NORM_SCALE_STD = 0.1  # norm scales are 1 + N(0, 0.1^2)
BIAS_STD = 0.02


def random_state_dict(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 values for every tensor of ``module`` (which may live on the meta device)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        shape = tuple(tensor.shape)
        values = torch.randn(shape, generator=generator)
        if name.endswith("embedding.weight"):
            values *= CODEBOOK_STD
        elif name == "position_emb":
            values *= POSITION_STD
        elif len(shape) == 1 and name.endswith("weight"):  # GroupNorm / LayerNorm scale
            values = 1 + NORM_SCALE_STD * values
        elif len(shape) == 1:  # biases
            values *= BIAS_STD
        else:  # conv (out, in, kh, kw) and linear (out, in) weights
            values /= math.sqrt(math.prod(shape[1:]))
        state[name] = values
    return state


def random_codeformer(config: CodeFormerConfig, seed: int = 0) -> CodeFormer:
    """An in-memory CodeFormer with random weights, in eval mode.

    A smaller ``latent_size`` gives a network for smaller faces (16 -> 128x128), whose forward pass
    is 16x cheaper than at 512x512: use it where a test does not need the official input size.
    """
    with torch.device("meta"):
        net = CodeFormer(**asdict(config))
    net.load_state_dict(random_state_dict(net, seed), assign=True)
    return net.eval()


def _save(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save({WRAPPER_KEY: dict(state)}, temporary)
    return path


def write_codeformer_checkpoint(path: str | Path, variant: str = "codeformer", seed: int = 0) -> Path:
    """Write a random CodeFormer checkpoint in the layout of the official ``variant`` file; returns ``path``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    with torch.device("meta"):  # only the names and shapes are needed
        net = CodeFormer(**asdict(VARIANTS[variant]))
    return _save(random_state_dict(net, seed), path)


# A CodeFormer for 128x128 crops (latent 4x4), few layers, half the official width (the loader reads all three
# from the file): a fraction of a second per face.
SMALL_CONFIG = CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=16, base_channels=32)
# The same for 64x64 crops (latent 2x2): the VQGAN's convolutions, most of the work, shrink with the crop
# (about a third of SMALL_CONFIG's time per face). For tests where the crop's size does not matter.
TINY_CONFIG = CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=4, base_channels=32)


# A ParseNet for 512 px faces (as the official one) an eighth as wide at full resolution, with one body block
# instead of ten: about 20x faster on a CPU. The parser reads its shape from the file.
SMALL_PARSENET_SHAPE = dict(steps=4, base_channels=8, channel_range=(8, 32), body_blocks=1)


def write_small_parsenet(path: str | Path, seed: int = 0) -> Path:
    """Write a random small ParseNet (:data:`SMALL_PARSENET_SHAPE`) in the official file's layout."""
    from codeformer.face.parsing import ParseNetShape, build_parsenet

    torch.manual_seed(seed)
    network = build_parsenet(ParseNetShape(**SMALL_PARSENET_SHAPE))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(network.state_dict(), temporary)
    return path


def write_small_codeformer_checkpoint(path: str | Path, config: CodeFormerConfig = SMALL_CONFIG, seed: int = 0) -> Path:
    """Write a random CodeFormer of ``config`` as the official files are written (under ``params_ema``)."""
    with torch.device("meta"):
        net = CodeFormer(**asdict(config))
    return _save(random_state_dict(net, seed), path)


def write_vqgan_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write a random VQGAN checkpoint in the layout of ``vqgan_code1024.pth``; returns ``path``."""
    with torch.device("meta"):
        net = VQAutoEncoder()
    return _save(random_state_dict(net, seed), path)


def write_small_vqgan_checkpoint(path: str | Path, nf: int = 32, seed: int = 0) -> Path:
    """Write a random VQGAN of the official level layout at base width ``nf`` (official: 64; a multiple of 32 for
    its GroupNorms). The library reads the width from the file, so it runs 512 px faces as with the official file."""
    with torch.device("meta"):
        net = VQAutoEncoder(nf=nf)
    return _save(random_state_dict(net, seed), path)


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of the test run shared by its processes: under pytest-xdist each worker has its own base
    folder inside the run's."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_dir(tmp_path_factory, "checkpoints")


def written_once(path: Path, write: Callable[[Path], Path]) -> Path:
    """``path``, written by ``write`` unless there: one writer at a time (xdist workers share the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return path if path.is_file() else write(path)


def cached_codeformer_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, variant: str = "codeformer", seed: int = 0
) -> Path:
    """The session's random ``variant`` checkpoint, written on first request (named like the official file)."""
    path = _cache_dir(tmp_path_factory) / f"seed{seed}" / OFFICIAL_NAMES[variant]
    return written_once(path, lambda target: write_codeformer_checkpoint(target, variant, seed))


def _small_dir(tmp_path_factory: pytest.TempPathFactory, config: CodeFormerConfig, seed: int) -> Path:
    """The cache folder of one small network: named after its crop side and a digest of its whole config."""
    side = math.isqrt(config.latent_size) * 32
    digest = hashlib.sha1(repr(config).encode()).hexdigest()[:10]
    return _cache_dir(tmp_path_factory) / f"seed{seed}" / f"small_{side}px_{digest}"


def cached_small_codeformer_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, config: CodeFormerConfig = SMALL_CONFIG, seed: int = 0
) -> Path:
    """The session's random CodeFormer of ``config`` (a small one), written on first request.

    Loading it (``build_codeformer(load_state_dict(path))``) is several times cheaper than making the
    network again, which matters most in processes that start afresh (the web app's restoration process).
    """
    path = _small_dir(tmp_path_factory, config, seed) / "codeformer_small.pth"
    return written_once(path, lambda target: write_small_codeformer_checkpoint(target, config, seed))


def cached_small_codeformer_onnx(
    tmp_path_factory: pytest.TempPathFactory, config: CodeFormerConfig = SMALL_CONFIG, seed: int = 0
) -> Path:
    """What ``codeformer export onnx`` writes for :func:`cached_small_codeformer_checkpoint`, exported once per
    session: an export takes seconds and the ONNX test modules use the same graph."""
    from codeformer.cli import main

    checkpoint = cached_small_codeformer_checkpoint(tmp_path_factory, config, seed)

    def export(target: Path) -> Path:
        code = main(["export", "onnx", "-o", str(target), "--model", str(checkpoint), "-q"])
        if code != 0:
            raise AssertionError(f"codeformer export onnx exited with {code}")
        return target

    return written_once(checkpoint.with_suffix(".onnx"), export)


def cached_vqgan_checkpoint(tmp_path_factory: pytest.TempPathFactory, seed: int = 0) -> Path:
    """The session's random VQGAN checkpoint, written on first request."""
    path = _cache_dir(tmp_path_factory) / f"seed{seed}" / "vqgan_code1024.pth"
    return written_once(path, lambda target: write_vqgan_checkpoint(target, seed))
