"""Loaded pipelines for the web app: one per load choice, the few most recent kept, one lock for the device."""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from codeformer.errors import OptionError
from codeformer.options import LoadOptions

if TYPE_CHECKING:
    from codeformer.pipeline import Pipeline

__all__ = ["DEFAULT_CACHE_SIZE", "PipelineCache", "PipelineFactory", "load_real_pipeline"]

logger = logging.getLogger(__name__)

# Pipelines kept loaded: each holds a CodeFormer (~370 MB of weights) and its helpers, so a few
# choices switch instantly and memory stays bounded however many choices a user tries.
DEFAULT_CACHE_SIZE = 3

PipelineFactory = Callable[[LoadOptions], "Pipeline"]


def load_real_pipeline(options: LoadOptions) -> Pipeline:
    """The default factory: :func:`codeformer.load_pipeline` (the registry's networks from the weights folder)."""
    from codeformer.pipeline import load_pipeline

    return load_pipeline(options)


class PipelineCache:
    """Loaded pipelines by :class:`~codeformer.options.LoadOptions` (the most recent ``capacity``), and the device lock.

    ``base``: the server's own load settings (device, precision, weights root) that every page
    choice starts from. ``factory`` loads a pipeline: :func:`codeformer.load_pipeline` by default,
    or a test's function that builds small random ones.
    """

    def __init__(self, factory: PipelineFactory = load_real_pipeline, *, base: LoadOptions | None = None,
                 capacity: int = DEFAULT_CACHE_SIZE) -> None:
        if capacity < 1:
            raise OptionError("capacity", capacity, "must be at least 1")
        self._factory = factory
        self.base = base if base is not None else LoadOptions()
        self._capacity = capacity
        self._loaded: OrderedDict[LoadOptions, Pipeline] = OrderedDict()
        # Re-entrant: a handler holding it may ask for a second pipeline.
        self.lock = threading.RLock()
        self.loads = 0  # how many times the factory ran (tests check reuse)

    def run(self, handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``handler(self, *args, **kwargs)`` in this process (see :class:`~codeformer.webapp.worker.HandlerRunner`)."""
        return handler(self, *args, **kwargs)

    def close(self) -> None:
        """Nothing to stop: the pipelines go with the cache."""

    def loaded(self) -> tuple[LoadOptions, ...]:
        with self.lock:
            return tuple(self._loaded)

    @contextmanager
    def using(self, choice: LoadOptions) -> Iterator[Pipeline]:
        """The pipeline for ``choice`` (loaded on first use), used while no other request runs."""
        with self.lock:
            pipeline = self._loaded.get(choice)
            if pipeline is None:
                pipeline = self._load(choice)
            else:
                self._loaded.move_to_end(choice)
            yield pipeline

    def _load(self, choice: LoadOptions) -> Pipeline:
        if len(self._loaded) >= self._capacity:
            # Free the oldest first, so that peak memory is `capacity` pipelines, not one more.
            dropped, _ = self._loaded.popitem(last=False)
            logger.info("unloading %s to make room", dropped.model_name)
            gc.collect()
        pipeline = self._factory(choice)
        self.loads += 1
        self._loaded[choice] = pipeline
        return pipeline
