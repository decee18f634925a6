"""Folders of pictures on a Ray cluster: the single-machine layout, byte for byte, from a pool of workers.

The driver lists the inputs, drops those whose final result already exists (before anything is
scheduled), and groups the rest exactly as :func:`codeformer.jobs.loop.run_batch` would on one machine:
whole pictures one by one, aligned faces in chunks of the pipeline's batch size (a network's float
sums depend on what is batched together, so the same chunks give the same bytes). Ray Data reads
each chunk's files as bytes (any path or fsspec URL; read tasks overlap the restoring) and streams
them to an actor pool; each actor builds the pipeline once (one per GPU, or per CPU slot), decodes them with
:func:`codeformer.imageio.decode_image` (16-bit, alpha and EXIF kept), restores them with the same
calls and output layout as :mod:`codeformer.jobs.local`, and writes every output atomically itself. Only a
small status row per input comes back to the driver, which shows progress, logs one line per
failure, and writes ``ray_report.jsonl``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from codeformer.jobs.layout import FINAL_FOLDER, final_picture_name, output_stems, picture_outputs, with_suffix_name
from codeformer.jobs.loop import BatchReport, describe_failure
from codeformer.jobs.report import FaceReport, face_entries
from codeformer.jobs.ray.ledger import Ledger
from codeformer.jobs.ray.recipe import build_on_worker
from codeformer.jobs.ray.session import Workers, plan_workers, run_dataset
from codeformer.jobs.storage import Folder, read_file, split_location
from codeformer.progress import Progress
from codeformer.imageio import Picture, decode_image, encode_image

if TYPE_CHECKING:
    from codeformer.jobs.ray.recipe import PipelineSource

__all__ = ["restore_pictures_on_ray"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    """One input picture and where its result goes."""

    location: str  # path or URL every worker can read
    stem: str  # output base name (unique in the job, as on one machine)
    output: str  # the final result, relative to the output folder: its presence means done


@dataclass(frozen=True)
class PictureJob:
    """Everything a worker needs; sent once to each actor."""

    source: PipelineSource
    items: tuple[_Item, ...]
    out: Folder
    aligned: bool  # aligned faces (``<out>/<name>.png``) rather than whole pictures
    suffix: str | None
    threads: int  # torch threads of a CPU worker
    describe: Callable[[BaseException], str]  # words a failure in one line (the CLI names its flags)
    report: bool = False  # send back each picture's face entries for report.json


def _plan(inputs: Sequence[str], out: Folder, *, aligned: bool, suffix: str | None, extension: str | None,
          chunk_size: int) -> tuple[list[_Item], list[list[int]], list[int]]:
    """The items, the chunks still to run (indices, as run_batch groups them) and the indices already done."""
    keys = [Path(location) for location in inputs]  # unique per input; name, stem and suffix as the file's
    stems = output_stems(keys)
    items = []
    for location, key in zip(inputs, keys):
        name, stem = Path(split_location(location)[1]), stems[key]
        if aligned:
            output = with_suffix_name(stem, suffix)
        else:
            output = f"{FINAL_FOLDER}/{final_picture_name(name, stem, suffix, extension)}"
        items.append(_Item(location, stem, output))
    # One listing of the result folder, not a request per input (object stores charge per request).
    existing = out.names("" if aligned else FINAL_FOLDER)
    done = [index for index, item in enumerate(items) if item.output.rpartition("/")[2] in existing]
    skip = set(done)
    chunks = []
    for start in range(0, len(items), chunk_size):
        chunk = [index for index in range(start, min(start + chunk_size, len(items))) if index not in skip]
        if chunk:
            chunks.append(chunk)
    return items, chunks, done


def _read_chunk(row: Mapping[str, Any], job: PictureJob) -> dict[str, Any]:
    """Ray Data's read stage: the bytes of a chunk's files, or the line that says why one could not be read."""
    indices = [int(index) for index in row["items"]]
    data: list[bytes] = []
    errors: list[str] = []
    for index in indices:
        location = job.items[index].location
        try:
            data.append(read_file(location))
            errors.append("")
        except Exception as error:  # noqa: BLE001 - reported per file by the worker, the job goes on
            data.append(b"")
            errors.append(_failure_line(location, job.describe(error)))
    return {"items": indices, "data": data, "read_error": errors}


class _PictureWorker:
    """A Ray actor: loads the pipeline once, then restores chunks of pictures and writes their outputs."""

    def __init__(self, job: PictureJob) -> None:
        self._job = job
        self._pipeline, self._options = build_on_worker(job.source, job.threads)

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One chunk (input indices and their bytes): decode, restore together, write each; a status per input."""
        job = self._job
        indices = [int(index) for index in row["items"]]
        outcome: dict[int, tuple[str, str, int]] = {}  # index -> (status, error line, faces)
        entries: dict[int, str] = {}  # index -> its face entries (JSON) for report.json

        def fail(index: int, error: BaseException) -> None:
            outcome[index] = ("failed", _failure_line(job.items[index].location, job.describe(error)), 0)

        loaded: list[tuple[int, Picture]] = []
        for index, data, read_error in zip(indices, row["data"], row["read_error"]):
            location = job.items[index].location
            if read_error:
                outcome[index] = ("failed", str(read_error), 0)
                continue
            try:
                loaded.append((index, decode_image(bytes(data), name=location, max_pixels=self._options.max_pixels)))
            except Exception as error:  # noqa: BLE001 - reported per file, the job goes on
                fail(index, error)
        try:
            restored = self._restore(loaded) if loaded else []
        except Exception as error:  # noqa: BLE001 - the whole chunk fails, as on one machine
            for index, _ in loaded:
                fail(index, error)
            restored = []
        for index, files, faces, faces_report in restored:
            try:
                for relative, image in files:  # the final result last
                    job.out.write_bytes(relative, encode_image(relative, image))
                outcome[index] = ("done", "", faces)
                entries[index] = faces_report
            except Exception as error:  # noqa: BLE001
                fail(index, error)
        return {
            "items": indices,
            "status": [outcome[index][0] for index in indices],
            "error": [outcome[index][1] for index in indices],
            "faces": [outcome[index][2] for index in indices],
            "entries": [entries.get(index, "") for index in indices],
        }

    def _restore(self, loaded: list[tuple[int, Picture]]) -> list[tuple[int, list[tuple[str, np.ndarray]], int, str]]:
        """(input index, its output files relative to the output folder, its face count, its report entries as
        JSON or "") for each loaded picture."""
        from codeformer.jobs.local import restore_aligned_images

        job = self._job
        pictures = [picture for _, picture in loaded]
        if job.aligned:
            names = [split_location(job.items[index].location)[1] for index, _ in loaded]
            images = restore_aligned_images(self._pipeline, pictures, names, self._options)
            return [(index, [(job.items[index].output, image)], 1, "") for (index, _), image in zip(loaded, images)]
        restored = []
        for index, picture in loaded:
            # One picture per call, as on one machine: the faces of a picture are batched together.
            result = self._pipeline.restore_pictures([picture], self._options)[0]
            item = job.items[index]
            final_name = item.output.rpartition("/")[2]
            entries = json.dumps(face_entries(result)) if job.report else ""
            restored.append((index, picture_outputs(item.stem, job.suffix, final_name, result), len(result.faces),
                             entries))
        return restored


def _batch_size(source: PipelineSource, workers: Workers | None) -> int:
    """Faces per forward on the workers: the source's, else what :func:`codeformer.load_pipeline` picks there."""
    from codeformer.pipeline import CPU_BATCH_SIZE, GPU_BATCH_SIZE

    if source.batch_size is not None:
        return source.batch_size
    return GPU_BATCH_SIZE if workers is not None and workers.gpus else CPU_BATCH_SIZE


def _failure_line(location: str, line: str) -> str:
    """A failure's line starts with the input's name, as :func:`codeformer.jobs.loop.run_batch` words it."""
    name = split_location(location)[1]
    return line if line.startswith(location) or line.startswith(name) else f"{name}: {line}"


def restore_pictures_on_ray(
    source: PipelineSource,
    inputs: Sequence[str],
    out: str,
    *,
    aligned: bool = False,
    suffix: str | None = None,
    extension: str | None = None,
    workers: Workers | None = None,
    report_to: str | None = None,
    not_read: Sequence[tuple[str, str]] = (),
    progress: bool = True,
    desc: str = "restoring",
    describe: Callable[[BaseException], str] = describe_failure,
    report_faces: bool = False,
) -> BatchReport:
    """Restore pictures (paths or fsspec URLs) on the Ray instance this process is connected to.

    Writes what :func:`codeformer.jobs.local.restore_picture_files` writes (``aligned``:
    :func:`~codeformer.jobs.local.restore_aligned_files`) into ``out`` (a path or URL), skipping inputs
    whose final result is there. ``report_to``: the folder for ``ray_report.jsonl`` (default ``out``),
    which also lists ``not_read`` (folder entries that are not pictures, with why). ``workers``:
    the actor pool (default :func:`~codeformer.jobs.ray.session.plan_workers` for the source's device).
    ``report_faces``: whole pictures' faces go into ``report.json`` in ``report_to`` too, in input
    order, as the single-machine run writes it (entries of earlier runs kept). A failed input is one
    logged line and counts in the returned report; Ctrl-C stops the job (the reports are still
    written) and is raised.
    """
    out_folder = Folder(out)
    if workers is None and aligned:
        workers = plan_workers(device=source.device)
    chunk_size = _batch_size(source, workers) if aligned else 1
    items, chunks, done = _plan(inputs, out_folder, aligned=aligned, suffix=suffix, extension=extension,
                                chunk_size=chunk_size)
    ledger = Ledger()
    for item in items:
        ledger.add(item.location, output=out_folder.child(item.output))
    for location, reason in not_read:
        ledger.add(location, "not_read", error=reason)
    for index in done:
        ledger.add(items[index].location, "skipped")
    report = BatchReport(skipped=len(done))
    entries: dict[int, list[dict[str, Any]]] = {}  # input index -> its face entries (report_faces)
    if done:
        logger.info("%d of %d inputs already have their result in %s: skipped", len(done), len(items), out)
    try:
        if chunks:
            workers = workers or plan_workers(device=source.device)
            logger.info("running on Ray: %s for %d inputs", workers.describe(), sum(map(len, chunks)))
            job = PictureJob(source, tuple(items), out_folder, aligned, suffix, workers.cpus, describe,
                             report=report_faces and not aligned)
            rows = [{"items": chunk} for chunk in chunks]
            with Progress(total=len(items), initial=len(done), desc=desc, unit="image" if not aligned else "face",
                          enabled=progress) as bar:

                def on_row(row: Mapping[str, Any]) -> None:
                    for index, status, error, faces, faces_report in zip(row["items"], row["status"], row["error"],
                                                                         row["faces"], row["entries"]):
                        item = items[int(index)]
                        if status == "done":
                            report.done += 1
                            if faces_report:
                                entries[int(index)] = json.loads(faces_report)
                            ledger.add(item.location, "done")
                            if not aligned:
                                logger.info("%s: %d face%s", split_location(item.location)[1], faces,
                                            "" if faces == 1 else "s")
                        else:
                            report.failed += 1
                            report.notes.append(str(error))
                            ledger.add(item.location, "failed", error=str(error))
                            logger.error("%s", error)
                        bar.update(1, split_location(item.location)[1])

                run_dataset(rows, _PictureWorker, job, workers, on_row, read=_read_chunk)
    finally:
        ledger.write(Folder(report_to or out))
        if report_faces and not aligned:
            faces_report = FaceReport.in_folder(Folder(report_to or out), keep_existing=True)
            for index in sorted(entries):
                faces_report.add_picture_entries(split_location(items[index].location)[1], entries[index],
                                                 write=False)
            faces_report.write()
    return report
