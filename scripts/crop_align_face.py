"""Crop and align the faces of whole photos the FFHQ way:
``python scripts/crop_align_face.py -i inputs/whole_imgs -o inputs/cropped_faces``."""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable as `python scripts/...` from a checkout: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codeformer.cli import crop_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(crop_main())
