"""The pipeline recipe test_ray ships to Ray's processes, in a module of its own that imports nothing heavy.

Ray Data's read tasks unpickle the job, recipe included, only to fetch input bytes: importing test_ray
there would import torch, PyAV and the tests' helpers in every read worker. The recipe builds its
pipeline (and imports what that needs) only when an actor asks for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ONE_FACE = ((0.5, 0.5),)  # where the fake detector finds a face


@dataclass(frozen=True)
class SmallRecipe:
    """The tiny network with a one-face fake detector (whole pictures) or none (aligned faces), built on a worker."""

    aligned: bool = False
    batch_size: int = 3
    device: str = "cpu"

    def build(self):
        import ray

        from checkpoint_factory import TINY_CONFIG
        from test_pipeline import FakeDetector, small_pipeline

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            # A worker must run with one malloc arena (see run_dataset): else its thread is slow.
            assert os.environ.get("MALLOC_ARENA_MAX") == "1", "the worker was started without MALLOC_ARENA_MAX=1"
        # 64 px crops: the bytes, not the crop's size, matter here.
        pipeline = small_pipeline(FakeDetector(ONE_FACE), TINY_CONFIG)
        pipeline.detector = None if self.aligned else pipeline.detector
        pipeline.batch_size = self.batch_size
        return pipeline, pipeline.options(fidelity_weight=0.6, upscale=2)
