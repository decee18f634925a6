"""Download (or check) the pretrained files into the weights root.

    python scripts/download_pretrained_models.py CodeFormer            # one group
    python scripts/download_pretrained_models.py all                   # every file the commands use
    python scripts/download_pretrained_models.py facelib/yolov5l-face.pth   # one file by its path
    python scripts/download_pretrained_models.py all --verify          # sha256-check what is there
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable as `python scripts/...` from a checkout: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codeformer.cli import download_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(download_main())
