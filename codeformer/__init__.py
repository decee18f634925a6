"""CodeFormer: blind face restoration with a learned codebook (NeurIPS 2022).

One front door::

    import codeformer
    pipe = codeformer.load_pipeline("codeformer")
    result = pipe.restore("photo.jpg", fidelity_weight=0.5, upscale=2)
    result.image, result.faces

What to load and what to do are typed option objects (:class:`LoadOptions`, :class:`RestoreOptions`,
:class:`VideoOptions`); the keywords above are their fields. Many inputs at once, written in the
reference's layout, are a job (:mod:`codeformer.jobs`).

Importing the package loads no network code; :func:`load_pipeline` imports what a model needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from codeformer.errors import CodeFormerError, OptionError
from codeformer.registry import UnknownModelError, available_detectors, available_models, available_upsamplers

if TYPE_CHECKING:
    from codeformer.options import LoadOptions, RestoreOptions, VideoOptions
    from codeformer.pipeline import Pipeline, RestoredFace, RestoreResult, load_pipeline

__version__ = "0.3.0"

__all__ = [
    "CodeFormerError",
    "LoadOptions",
    "OptionError",
    "Pipeline",
    "RestoreOptions",
    "RestoreResult",
    "RestoredFace",
    "UnknownModelError",
    "VideoOptions",
    "__version__",
    "available_detectors",
    "available_models",
    "available_upsamplers",
    "load_pipeline",
]

_PIPELINE_NAMES = ("Pipeline", "RestoreResult", "RestoredFace", "load_pipeline")
_OPTION_NAMES = ("LoadOptions", "RestoreOptions", "VideoOptions")


def __getattr__(name: str) -> Any:
    # The pipeline pulls in torch, OpenCV and the face code: import it on first use, not with the package.
    if name in _PIPELINE_NAMES:
        from codeformer import pipeline

        return getattr(pipeline, name)
    if name in _OPTION_NAMES:
        from codeformer import options

        return getattr(options, name)
    raise AttributeError(f"module 'codeformer' has no attribute {name!r}")
