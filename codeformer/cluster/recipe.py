"""What a worker needs to build the very pipeline the driver would: plain values, no argparse, no networks.

A cluster job sends each worker a recipe instead of a loaded pipeline (networks do not travel well
and each worker loads them once, on its own device). Anything with a ``build()`` that returns a
pipeline and its options, and the ``batch_size`` and ``device`` the driver plans with, will do
(:class:`PipelineSource`); :class:`PipelineRecipe` is the one the command line makes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from codeformer.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    from codeformer.face.pipeline import RestoreOptions
    from codeformer.pipeline import Pipeline

__all__ = ["PipelineRecipe", "PipelineSource", "build_on_worker"]

logger = logging.getLogger(__name__)


class PipelineSource(Protocol):
    """Builds, on a worker, the pipeline and options a job runs with (must be picklable)."""

    @property
    def batch_size(self) -> int | None: ...  # faces per forward (None: the device's default); groups aligned faces

    @property
    def device(self) -> str: ...  # "auto", "cpu", "cuda[:N]", "mps": decides GPU or CPU workers

    def build(self) -> tuple[Pipeline, RestoreOptions]: ...


@dataclass(frozen=True)
class PipelineRecipe:
    """:func:`codeformer.load_pipeline` and :meth:`Pipeline.options` keyword arguments, applied on a worker.

    ``load`` holds ``load_pipeline``'s keywords (``detector``, ``device``, ``weights_dir`` ...),
    ``options`` those of ``Pipeline.options`` (``fidelity_weight``, ``upscale``, ``max_pixels`` ...).
    ``runtime_tuning``: apply :func:`codeformer.precision.configure_cpu_runtime` in each worker, as
    the command line does in its own process (it changes float rounding, so both sides must agree).
    """

    model: str = DEFAULT_MODEL
    load: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    runtime_tuning: bool = False

    @property
    def batch_size(self) -> int | None:
        value = self.load.get("batch_size")
        return None if value is None else int(value)

    @property
    def device(self) -> str:
        return str(self.load.get("device", "auto"))

    def build(self) -> tuple[Pipeline, RestoreOptions]:
        from codeformer.pipeline import load_pipeline

        if self.runtime_tuning:
            from codeformer.precision import configure_cpu_runtime

            logger.debug("worker runtime: %s", ", ".join(configure_cpu_runtime()) or "unchanged")
        pipeline = load_pipeline(self.model, **self.load)
        return pipeline, pipeline.options(**self.options)


def build_on_worker(source: PipelineSource, threads: int) -> tuple[Pipeline, RestoreOptions]:
    """On a worker, once: torch's threads set to the CPUs it reserved (0: left as they are), then the pipeline."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return source.build()
