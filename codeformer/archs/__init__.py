"""Networks: the VQGAN face autoencoder and CodeFormer on top of it, GPEN-BFR, RestoreFormer++ (inference only)."""

from __future__ import annotations

from codeformer.archs.codeformer import (
    CodeFormer,
    CodeFormerConfig,
    build_codeformer,
    codeformer_config_from_state_dict,
)
from codeformer.archs.gpen import GPEN, GPENConfig, build_gpen, gpen_config_from_state_dict
from codeformer.archs.restoreformer_pp import (
    RestoreFormerPP,
    RestoreFormerPPConfig,
    build_restoreformer_pp,
    restoreformer_pp_config_from_state_dict,
    restoreformer_state_dict,
)
from codeformer.archs.vqgan import VQAutoEncoder, VQGANConfig, build_vqgan, vqgan_config_from_state_dict

__all__ = [
    "CodeFormer",
    "CodeFormerConfig",
    "GPEN",
    "GPENConfig",
    "RestoreFormerPP",
    "RestoreFormerPPConfig",
    "VQAutoEncoder",
    "VQGANConfig",
    "build_codeformer",
    "build_gpen",
    "build_restoreformer_pp",
    "build_vqgan",
    "codeformer_config_from_state_dict",
    "gpen_config_from_state_dict",
    "restoreformer_pp_config_from_state_dict",
    "restoreformer_state_dict",
    "vqgan_config_from_state_dict",
]
