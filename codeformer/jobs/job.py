"""A job: what to run on which inputs, where its outputs go, and where it runs.

A :class:`Job` is the one description every front end builds (the command line from its flags, a
script by hand) and :func:`codeformer.jobs.run_job` runs: in this process, or on a Ray cluster
when :attr:`Job.ray` is set. It holds the library's option objects (:mod:`codeformer.options`) plus
what only a job has: the input location, the output layout and where it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from codeformer.errors import OptionError
from codeformer.fidelity import check_fidelity_weight
from codeformer.jobs.layout import RESTORED_FACES_FOLDER, default_output_root
from codeformer.jobs.storage import Folder, is_url
from codeformer.options import LoadOptions, RestoreOptions, VideoOptions

__all__ = ["EXTENSIONS", "Job", "OutputOptions", "RayOptions"]

# --ext: the final pictures' format (faces stay png).
EXTENSIONS = ("png", "jpg", "auto")


@dataclass(frozen=True)
class OutputOptions:
    """Where outputs go and what else is written."""

    folder: str | None = None  # the output root (a path or URL); None: the reference's default for the input
    suffix: str | None = None  # added to output names: <name>_<suffix>.png
    extension: str = "png"  # final whole pictures: png (the reference's), jpg, or auto (the input's format)
    skip_existing: bool = False  # inputs whose result exists are skipped (resume)
    report: bool = False  # <out>/report.json: every face, restored or why not, and its identity distance
    save_frames: bool = False  # videos: also each frame's faces and final picture

    def __post_init__(self) -> None:
        if self.extension not in EXTENSIONS:
            raise OptionError("extension", self.extension, f"choose one of {', '.join(EXTENSIONS)}")


@dataclass(frozen=True)
class RayOptions:
    """Run the job on a Ray cluster (see :mod:`codeformer.jobs.ray`)."""

    address: str  # local (start an instance here), auto (this machine's cluster) or ray://host:port
    workers: int | None = None  # default: one per GPU, else one per CPU slot (capped by memory)
    worker_cpus: int | None = None  # CPUs, and torch threads, of each worker (default 1)
    segments: int | None = None  # a video is cut at keyframes into this many segments (default: one per worker)
    # Apply the process-wide CPU settings in each worker, as this process did (they change float rounding).
    runtime_tuning: bool = False


@dataclass(frozen=True)
class Job:
    """Restore (or colorize, inpaint, reconstruct) the faces of a picture, a folder, or a video.

    ``aligned``: the inputs are aligned face crops (``--has_aligned``); models that work on aligned
    faces only (colorization, inpainting, vqgan) always treat them so.
    """

    input: str  # a picture, a folder of pictures, or a video: a path, or an fsspec URL with ray
    load: LoadOptions = field(default_factory=LoadOptions)
    restore: RestoreOptions = field(default_factory=RestoreOptions)
    video: VideoOptions = field(default_factory=VideoOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    aligned: bool = False
    ray: RayOptions | None = None
    progress: bool = True  # progress bars

    @property
    def task(self) -> str:
        return self.load.task

    @property
    def faces_only(self) -> bool:
        """Whether the inputs are aligned faces: asked for, or the model works on nothing else."""
        return self.aligned or self.task != "restore"

    def is_folder(self) -> bool:
        return Folder(self.input).is_folder() if is_url(self.input) else Path(self.input).is_dir()

    def is_video(self) -> bool:
        """A single video file to restore (aligned inputs are always pictures)."""
        from codeformer.video import is_video_path  # PyAV: only when a video may be asked for

        if self.faces_only or not is_video_path(self.input):
            return False
        return not Folder(self.input).is_folder() if is_url(self.input) else Path(self.input).is_file()

    def output_tag(self) -> str:
        """What the default output folder is suffixed with: ``w`` (the reference's), else the model's name."""
        weight = check_fidelity_weight(self.restore.fidelity_weight)
        if weight is not None:
            return str(weight)
        spec = self.load.spec
        if spec is not None and spec.default_fidelity is not None:
            return str(spec.default_fidelity)
        return Path(self.load.model).stem

    def output_root(self) -> str:
        """The output folder: ``-o``, else the reference's default for this input and task."""
        if self.output.folder is not None:
            return self.output.folder
        return default_output_root(self.input, task=self.task, tag=self.output_tag(), is_folder=self.is_folder(),
                                   is_video=self.is_video())

    def faces_folder(self) -> str:
        """Where aligned faces are written: ``<out>/restored_faces`` for restoration, ``<out>`` otherwise."""
        root = self.output_root()
        if self.task != "restore":
            return root
        return Folder(root).child(RESTORED_FACES_FOLDER) if is_url(root) else str(Path(root) / RESTORED_FACES_FOLDER)

    def loading(self) -> LoadOptions:
        """What to load: aligned faces need no detector (and so no parser or upsampler)."""
        return replace(self.load, detector=None) if self.faces_only else self.load
