"""Networks: the VQGAN face autoencoder and CodeFormer on top of it (inference only)."""

from __future__ import annotations

from codeformer.archs.codeformer import (
    CodeFormer,
    CodeFormerConfig,
    build_codeformer,
    codeformer_config_from_state_dict,
)
from codeformer.archs.vqgan import VQAutoEncoder, VQGANConfig, build_vqgan, vqgan_config_from_state_dict

__all__ = [
    "CodeFormer",
    "CodeFormerConfig",
    "VQAutoEncoder",
    "VQGANConfig",
    "build_codeformer",
    "build_vqgan",
    "codeformer_config_from_state_dict",
    "vqgan_config_from_state_dict",
]
