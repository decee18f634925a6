"""What a worker needs to build the very pipeline the driver would: the option objects, no networks.

A cluster job sends each worker a recipe instead of a loaded pipeline (networks do not travel well
and each worker loads them once, on its own device). Anything with a ``build()`` that returns a
pipeline and its prepared options, and the ``batch_size`` and ``device`` the driver plans with, will
do (:class:`PipelineSource`); :class:`PipelineRecipe` carries a job's
:class:`~codeformer.options.LoadOptions` and :class:`~codeformer.options.RestoreOptions`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from codeformer.options import LoadOptions, RestoreOptions

if TYPE_CHECKING:
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
    """What to load and how to restore, applied on a worker: ``load_pipeline(load)`` then ``prepare(options)``.

    ``runtime_tuning``: apply :func:`codeformer.precision.configure_cpu_runtime` in each worker, as
    the command line does in its own process (it changes float rounding, so both sides must agree).
    """

    load: LoadOptions = field(default_factory=LoadOptions)
    options: RestoreOptions = field(default_factory=RestoreOptions)
    runtime_tuning: bool = False

    @property
    def batch_size(self) -> int | None:
        return self.load.batch_size

    @property
    def device(self) -> str:
        return self.load.device

    def build(self) -> tuple[Pipeline, RestoreOptions]:
        from codeformer.pipeline import load_pipeline

        if self.runtime_tuning:
            from codeformer.precision import configure_cpu_runtime

            logger.debug("worker runtime: %s", ", ".join(configure_cpu_runtime()) or "unchanged")
        pipeline = load_pipeline(self.load)
        return pipeline, pipeline.prepare(self.options)


def build_on_worker(source: PipelineSource, threads: int) -> tuple[Pipeline, RestoreOptions]:
    """On a worker, once: torch's threads set to the CPUs it reserved (0: left as they are), then the pipeline."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return source.build()
