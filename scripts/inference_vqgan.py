"""Reconstruct aligned faces through the VQGAN alone:
``python scripts/inference_vqgan.py -i inputs/cropped_faces -o results/vqgan_rec``."""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable as `python scripts/...` from a checkout: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codeformer.cli import vqgan_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(vqgan_main(tune_runtime=True))
