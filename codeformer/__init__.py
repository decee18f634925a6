"""CodeFormer: blind face restoration with a learned codebook (NeurIPS 2022).

One front door::

    import codeformer
    pipe = codeformer.load_pipeline("codeformer")
    result = pipe.restore("photo.jpg", fidelity_weight=0.5, upscale=2)
    result.image, result.faces

Importing the package loads no network code; :func:`load_pipeline` imports what a model needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from codeformer.errors import CodeFormerError, OptionError
from codeformer.registry import UnknownModelError, available_detectors, available_models, available_upsamplers

if TYPE_CHECKING:
    from codeformer.pipeline import Pipeline, RestoredFace, RestoreResult, load_pipeline

__version__ = "0.3.0"

__all__ = [
    "CodeFormerError",
    "OptionError",
    "Pipeline",
    "RestoreResult",
    "RestoredFace",
    "UnknownModelError",
    "__version__",
    "available_detectors",
    "available_models",
    "available_upsamplers",
    "load_pipeline",
]

_PIPELINE_NAMES = ("Pipeline", "RestoreResult", "RestoredFace", "load_pipeline")


def __getattr__(name: str) -> Any:
    # The pipeline pulls in torch, OpenCV and the face code: import it on first use, not with the package.
    if name in _PIPELINE_NAMES:
        from codeformer import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'codeformer' has no attribute {name!r}")
