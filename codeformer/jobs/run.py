"""Running a :class:`~codeformer.jobs.job.Job`: collect its inputs, check its output folder, and run it here or on Ray.

Everything a job's outcome depends on is decided here once for every front end: which kind of
input it is (pictures, aligned faces, a video), where outputs go, what is loaded, that the output
folder is writable before anything loads, the per-face report, and the summary line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from codeformer.errors import OptionError
from codeformer.jobs.inputs import collect_pictures, list_pictures
from codeformer.jobs.job import Job
from codeformer.jobs.layout import input_name
from codeformer.jobs.loop import BatchReport, describe_failure, ensure_writable_folder
from codeformer.jobs.report import REPORT_NAME, FaceReport
from codeformer.jobs.storage import is_url

__all__ = ["run_job", "task_words"]

logger = logging.getLogger(__name__)

# Progress-bar words by task: (bar label, summary verb).
_TASK_WORDS = {
    "restore": ("restoring", "restored"),
    "colorize": ("colorizing", "colorized"),
    "inpaint": ("inpainting", "inpainted"),
    "reconstruct": ("reconstructing", "reconstructed"),
}

Describe = Callable[[BaseException], str]


def task_words(task: str) -> tuple[str, str]:
    """(progress-bar label, summary verb) for a model's task: ("restoring", "restored") ..."""
    return _TASK_WORDS[task]


def run_job(job: Job, *, describe: Describe = describe_failure) -> BatchReport:
    """Run ``job``; one line per failed input, a summary line, and the report of what happened.

    Problems that stop the whole job (no such input, an output folder that cannot be written, a
    model that cannot be loaded) raise :class:`~codeformer.errors.CodeFormerError` before any input
    is worked on. ``describe`` words a failure in one line (a front end may name its own flags).
    """
    if job.ray is not None:
        return _run_on_ray(job, describe)
    if job.is_video():
        return _run_video(job)
    collected = collect_pictures(job.input)
    out_root = Path(job.output_root())
    out = Path(job.faces_folder()) if job.faces_only else out_root
    ensure_writable_folder(out)
    pipeline, options = _load(job)
    from codeformer.jobs import local

    if job.faces_only:
        report = local.restore_aligned_files(pipeline, collected.pictures, out, options, suffix=job.output.suffix,
                                             skip_existing=job.output.skip_existing, progress=job.progress,
                                             describe=describe)
    else:
        report = local.restore_picture_files(pipeline, collected.pictures, out_root, options,
                                             suffix=job.output.suffix, skip_existing=job.output.skip_existing,
                                             progress=job.progress, extension=job.output.extension,
                                             report=_face_report(job, out_root), describe=describe)
    return _finish(report, [(str(path), why) for path, why in collected.skipped], str(out_root), job.task)


def _load(job: Job):
    from codeformer.pipeline import load_pipeline

    pipeline = load_pipeline(job.loading())
    return pipeline, pipeline.prepare(job.restore)


def _face_report(job: Job, out_root: Path) -> FaceReport | None:
    if not job.output.report:
        return None
    return FaceReport(out_root / REPORT_NAME, keep_existing=job.output.skip_existing)


def _run_video(job: Job) -> BatchReport:
    from codeformer.jobs.local import restore_video_file

    out_root = Path(job.output_root())
    ensure_writable_folder(out_root)
    pipeline, options = _load(job)
    written = restore_video_file(pipeline, Path(job.input), out_root, options, video=job.video,
                                 suffix=job.output.suffix, skip_existing=job.output.skip_existing,
                                 save_frames=job.output.save_frames, progress=job.progress,
                                 report=_face_report(job, out_root))
    return BatchReport(done=int(written is not None), skipped=int(written is None))


def _finish(report: BatchReport, not_read: list[tuple[str, str]], out_root: str, task: str) -> BatchReport:
    """Count and list the folder entries that were not read, so the summary adds up to the folder; log it."""
    for location, reason in not_read:
        logger.warning("skipped %s: %s", input_name(location), reason)
    report.skipped += len(not_read)
    logger.info("%s; results in %s", report.summary(task_words(task)[1]), out_root)
    return report


# ------------------------------------------------------------------------------------------ on Ray


def _check_local_output(location: str) -> None:
    if not is_url(location):
        ensure_writable_folder(Path(location))


def _run_on_ray(job: Job, describe: Describe) -> BatchReport:
    """Pictures, aligned faces or a video on a Ray cluster: same outputs, plus ``<out>/ray_report.jsonl``."""
    from codeformer.jobs.ray import PipelineRecipe, plan_workers, ray_session, restore_pictures_on_ray, \
        restore_video_on_ray

    assert job.ray is not None
    recipe = PipelineRecipe(job.loading(), job.restore, runtime_tuning=job.ray.runtime_tuning)

    def workers():
        return plan_workers(job.ray.workers, job.ray.worker_cpus, device=job.load.device)

    out_root = job.output_root()
    if job.is_video():
        if job.restore.face_index is not None:
            raise OptionError("face_index", ",".join(map(str, job.restore.face_index)),
                              "numbers a video's faces by first appearance, which a segment on Ray cannot know: "
                              "restore this video in one process, or choose faces by a reference face")
        _check_local_output(out_root)
        with ray_session(job.ray.address):
            written = restore_video_on_ray(recipe, job.input, out_root, suffix=job.output.suffix,
                                           segments=job.ray.segments, workers=workers(), settings=job.video,
                                           progress=job.progress, describe=describe,
                                           report_faces=job.output.report, save_frames=job.output.save_frames)
        return BatchReport(done=int(written is not None), skipped=int(written is None))
    pictures, not_read = list_pictures(job.input)
    out = job.faces_folder() if job.faces_only else out_root
    _check_local_output(out)
    label = task_words(job.task)[0]
    with ray_session(job.ray.address):
        report = restore_pictures_on_ray(
            recipe, pictures, out, aligned=job.faces_only, suffix=job.output.suffix,
            extension=None if job.faces_only else job.output.extension, workers=workers(), report_to=out_root,
            not_read=not_read, progress=job.progress, desc=label, describe=describe,
            report_faces=job.output.report)
    return _finish(report, not_read, out_root, job.task)
