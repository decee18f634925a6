"""CodeFormer: blind face restoration with a learned codebook (NeurIPS 2022)."""

from __future__ import annotations

from codeformer.errors import CodeFormerError

__version__ = "0.2.0"

__all__ = ["CodeFormerError", "__version__"]
