"""End to end against the reference: whole pictures, aligned faces and video, ours vs a straightforward reference.

Each measurement runs a job the way a user runs it, in a fresh process, on files:

- ours: :func:`codeformer.load_pipeline` and the functions the command line runs
  (:func:`codeformer.jobs.local.restore_picture_files`, ``restore_aligned_files``, ``restore_video_file``),
  after :func:`codeformer.precision.configure_cpu_runtime`, as the command line does;
- the reference: :mod:`benchmarks.reference_pipeline` (``inference_codeformer.py``'s loop with the face
  helper, one face per forward, float32, ParseNet per face, full-canvas paste-back, PNG writes;
  video: decode all, per-frame pictures, PNGs read back, encode), without process tuning;
- with ``--original DIR``, also the original: sczhou/CodeFormer's own ``inference_codeformer.py`` from
  the checkout DIR, run as is (see below).

Jobs (default flags: ``-w 0.5 -s 2``, RetinaFace ResNet-50, ParseNet, no upsampler):

- picture: the 2000x1500 group photo with five faces (:func:`benchmarks.faces.group_photo`), as a JPEG;
  targets: ours at most 0.5x the reference's wall time, 0.35x the original's (issue 24);
- aligned: real 512x512 face crops (:func:`benchmarks.faces.real_face_crops`) with ``--has_aligned``,
  ours in fp32 (target 0.5x) and ``--precision auto`` (target 0.3x where the CPU has bf16);
- video: a 720p clip with one face (:func:`benchmarks.faces.video_frame`, sliding and noisy, no
  audio); target: ours at least 2x the reference's frames per second;
- video_dlib: the same clip with dlib's real detector, ours on the mp4 (in and out) and the original on
  its decoded frames as PNG files (its video path extracts them with the ``ffmpeg`` program first,
  which is not counted: a lower bound of its time); target (issue 24): ours at least 2.5x the
  original's frames per second;
- photos: whole photos (default: ``inputs/whole_imgs/astronaut.jpg`` and ``astronaut_pair.jpg``, or
  ``--photos``) with ``-w 0.7 -s 2 --detection_model dlib``: ours and the original run dlib's real
  detector; the reference gets dlib's faces (looked up once) through
  :class:`benchmarks.reference_pipeline.KnownFaces` at the cost of dlib on the 640 px copy its
  helper detects on. Target (issue 24): ours at most 0.5x the original's wall time.

The original (``--original DIR``; default jobs then photos, aligned, video_dlib and picture): its
``inference_codeformer.py`` runs in the child process through ``runpy`` from a work folder that links the
checkout's packages and holds the same random weights under the original's names
(:mod:`benchmarks.original`; nothing is written into the checkout): ``-w 0.7 -s 2 --detection_model dlib``
on the photos, ``--has_aligned -w 0.5 -s 2`` on the aligned crops, ``-w 0.5 -s 2`` on the picture, where
its RetinaFace runs on the picture (the cost) and hands on the known faces, as the other sides' do. It is
not run on the video job's mp4 (its video path needs the ``ffmpeg`` program and ffmpeg-python: video_dlib
hands it the frames). Its time is the script's loop over the inputs, from the first ``clean_all`` to its
end (imports, model building and weight loading before it excluded, as the other sides' load time is;
its CPU time, which cannot be split so, is not compared); stages come from wrapping its classes in that
process. Besides this repository's requirements it needs addict, future, lmdb, lpips, yapf and scikit-image from PyPI, and a
``basicsr/version.py`` (:mod:`benchmarks.original` says how). Printed and saved: each side's times,
ours and the reference against the original (wall-time ratio), and output agreement with it.

Weights are random in the official layouts (speed does not depend on their values), written once
and loaded by every side. The faces of the picture and video jobs are the ones dlib finds (listed below, or
found again with ``--lookup-faces``), handed to both pipelines by
:class:`benchmarks.reference_pipeline.KnownFaces` at the cost of running RetinaFace on the picture.
Each process runs its job once to warm up (oneDNN primitives, allocator) and once timed;
configurations are interleaved (ours, reference, ours, reference, ...) and the minimum over
repeats is reported, so that other load on a shared machine skews both sides alike. Stage times
(read, detect, align, restore, parse, paste, write; video decode / encode) come from wrapping the
functions each side calls; ours runs video decoding and encoding in threads alongside.

Each run also records the CPU time of its process (``cpu_s``, all threads): less sensitive to other
load on the machine than the wall time the targets are about, it is given as a second ratio.

Output agreement: our outputs against the reference's, in 8-bit levels (maximum and mean absolute
difference, share of pixels that differ).

Usage, from the repository root::

    python -m benchmarks.bench_end_to_end [--quick] [--repeats 2] [--jobs picture aligned video photos]
    python -m benchmarks.bench_end_to_end --original /path/to/CodeFormer [--repeats 1] [--photos a.jpg]

``--quick`` (one repeat, 2 aligned faces, 2 video frames) takes about 5 minutes on two cores.
Prints the ratios and writes ``benchmarks/results/end_to_end.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, load_average, peak_rss_mib, run_child, save_report  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "end_to_end.json"
JOBS = ("picture", "aligned", "video")  # the default jobs
ALL_JOBS = (*JOBS, "photos", "video_dlib")
ORIGINAL_JOBS = ("photos", "aligned", "video_dlib", "picture")  # the jobs the original runs (see the docstring)
VIDEO_JOBS = ("video", "video_dlib")  # measured in frames per second
FRAMES_INPUT = "video_dlib_frames"  # the 720p clip's decoded frames as PNG files: the original's input
ORIGINAL_NOT_COMPARED = {  # jobs whose outputs cannot be compared with the original's (its times still can)
    "picture": "the known faces carry dlib's landmarks, which the original's RetinaFace path aligns to its own "
               "template (the other sides align them to dlib's): other crops, the same work",
}
ORIGINAL_NOT_RUN = {
    "video": "its video path needs the ffmpeg program and ffmpeg-python",
}
DEFAULT_PHOTOS = (REPO_ROOT / "inputs" / "whole_imgs" / "astronaut.jpg",
                  REPO_ROOT / "inputs" / "whole_imgs" / "astronaut_pair.jpg")
PHOTOS_FIDELITY = 0.7  # -w of the photos job
DEFAULT_FIDELITY = 0.5  # -w elsewhere: the model's (and the original script's) default
# Targets of issue 17: ours / reference wall time (video: ours / reference frames per second).
TARGET_PICTURE = 0.5
TARGET_ALIGNED_FP32 = 0.5
TARGET_ALIGNED_AUTO = 0.3  # on CPUs with native bf16
TARGET_VIDEO_FPS = 2.0
# Targets of issue 24: ours / the original's wall time per item (video: 2.5x its frames per second).
ORIGINAL_TARGETS = {("photos", "fp32"): 0.5, ("aligned", "fp32"): 0.5, ("aligned", "auto"): 0.3,
                    ("video_dlib", "fp32"): 1 / 2.5, ("picture", "fp32"): 0.35}
PICTURE_JPEG_QUALITY = 95
CLIP_FPS = 30
CLIP_SIZE = (1280, 720)  # (width, height)
WARMUP_SUFFIX = "_warmup"  # the warm-up run's output folder: <timed run's folder>_warmup
FRAMES_FOLDER = "frames"  # our restored video frames before encoding, in the warm-up run's folder
STAGES = ("decode", "read", "detect", "align", "restore", "parse", "paste", "write", "read back", "encode")

# What dlib's CNN detector (one pyramid upsampling) + 5-point predictor find, dlib 20: boxes (x1, y1, x2, y2)
# and landmarks in dlib's order, in the picture's pixels. On group_photo() at full size (86 s and 12 GB:
# the smallest face is missed at half size), and on video_frame() (the clip's first frame before encoding).
GROUP_PHOTO_FACES = (
    ((987, 255, 1043, 312), ((1042, 271), (1030, 272), (1000, 273), (1012, 273), (1021, 294))),
    ((583, 972, 651, 1040), ((640, 997), (629, 998), (600, 999), (611, 999), (621, 1019))),
    ((1604, 312, 1652, 359), ((1649, 331), (1639, 331), (1614, 329), (1624, 330), (1631, 349))),
    ((1329, 917, 1398, 985), ((1399, 943), (1383, 944), (1345, 940), (1360, 943), (1371, 971))),
    ((286, 246, 354, 315), ((349, 275), (335, 276), (300, 272), (314, 274), (324, 300))),
)
VIDEO_FRAME_FACES = (
    ((545, 157, 644, 255), ((639, 182), (619, 183), (569, 178), (588, 181), (603, 218))),
)


def _rows(faces: Any) -> np.ndarray:
    from benchmarks.reference_pipeline import face_rows

    return face_rows(np.array([box for box, _ in faces]), np.array([points for _, points in faces]))


def lookup_faces(picture: np.ndarray) -> np.ndarray:
    """Faces dlib finds in ``picture`` now, as RetinaFace-style rows (slow: see GROUP_PHOTO_FACES)."""
    from benchmarks.reference_pipeline import face_rows
    from codeformer.registry import load_detector

    found = load_detector("dlib", device="cpu").detect(picture)
    return face_rows(np.array([f.box for f in found]), np.array([f.landmarks for f in found]))


# ------------------------------------------------------------------------------------------------
# Inputs


def write_weights(root: Path) -> Path:
    """Random CodeFormer, RetinaFace ResNet-50 (zero classification head) and ParseNet in the official layouts."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import write_codeformer_checkpoint

    from benchmarks.bench_picture import random_weights_root
    from benchmarks.faces import _random_retinaface_state

    write_codeformer_checkpoint(root / "CodeFormer" / "codeformer.pth")
    detector = root / "facelib" / "detection_Resnet50_Final.pth"
    detector.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_random_retinaface_state(), detector)
    return random_weights_root(root)


def write_inputs(folder: Path, aligned_faces: int, frames: int, photos: list[Path]) -> dict[str, str]:
    import shutil

    import cv2

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from video_factory import make_clip

    from benchmarks.faces import group_photo, real_face_crops, video_frame

    picture = folder / "group.jpg"
    cv2.imwrite(str(picture), group_photo(), [cv2.IMWRITE_JPEG_QUALITY, PICTURE_JPEG_QUALITY])
    aligned = folder / "aligned"
    aligned.mkdir()
    for name, crop in real_face_crops(count=aligned_faces):
        cv2.imwrite(str(aligned / f"{name}.png"), crop)
    clip = folder / "clip_720p.mp4"
    make_clip(clip, frames=frames, fps=CLIP_FPS, size=CLIP_SIZE, audio=None, image=video_frame(CLIP_SIZE))
    frames_folder = folder / "clip_frames"  # what the original's video path extracts with ffmpeg, then restores
    frames_folder.mkdir()
    for index, frame in enumerate(_video_frames(clip)):
        cv2.imwrite(str(frames_folder / f"{index:08d}.png"), frame)
    whole = folder / "photos"
    whole.mkdir()
    for photo in photos:
        shutil.copyfile(photo, whole / photo.name)  # the files as they are: each side decodes them itself
    return {"picture": str(picture), "aligned": str(aligned), "video": str(clip), "photos": str(whole),
            "video_dlib": str(clip), FRAMES_INPUT: str(frames_folder)}


def lookup_photo_faces(folder: Path) -> list[list[Any]]:
    """dlib's faces on each photo's working picture (short side raised to 512, as both helpers read it),
    as ``known`` entries ``[[height, width], rows]`` for the reference's KnownFaces."""
    from codeformer.restoration import working_image
    from codeformer.imageio import read_image

    known = []
    for path in sorted(folder.iterdir()):
        work, _ = working_image(read_image(path))
        known.append([list(work.shape[:2]), lookup_faces(work).tolist()])
    return known


# ------------------------------------------------------------------------------------------------
# Children


def _known_faces(config: dict[str, Any]) -> dict[tuple[int, int], np.ndarray]:
    return {tuple(size): np.array(rows) for size, rows in config["known"]}


def instrument(pipe: Any, clock: Any) -> None:
    """Time our pipeline's stages into ``clock`` by wrapping the functions it calls (in this process).

    detect: ``find_faces`` / ``find_faces_in_frames`` (resize included); align: similarity fit and warp;
    restore: ``Restorer.restore``; parse: ``FaceParser.masks``; paste: the background resize and
    ``paste_faces``; read / write: the picture files. Video decoding and encoding run in their own
    threads, untimed.
    """
    import codeformer.restoration as face_pipeline
    import codeformer.temporal as temporal
    import codeformer.jobs.local as runs

    pipe.restorer.restore_crops = clock.wrap("restore", pipe.restorer.restore_crops)
    if pipe.parser is not None:
        pipe.parser.masks = clock.wrap("parse", pipe.parser.masks)
    if getattr(face_pipeline, "_timed_by", None) is clock:
        return
    face_pipeline._timed_by = clock  # module functions are wrapped once per clock
    face_pipeline.find_faces = clock.wrap("detect", face_pipeline.find_faces)
    temporal.find_faces_in_frames = clock.wrap("detect", temporal.find_faces_in_frames)
    face_pipeline.estimate_alignment = clock.wrap("align", face_pipeline.estimate_alignment)
    face_pipeline.warp_face = clock.wrap("align", face_pipeline.warp_face)
    face_pipeline._canvas = clock.wrap("paste", face_pipeline._canvas)  # the background resize
    face_pipeline.paste_faces = clock.wrap("paste", face_pipeline.paste_faces)
    runs.read_image = clock.wrap("read", runs.read_image)
    runs.write_image = clock.wrap("write", runs.write_image)


def _ours(config: dict[str, Any]) -> dict[str, Any]:
    """Our job through load_pipeline and the command line's functions, stages timed."""
    import codeformer.jobs.local as runs
    from benchmarks.reference_pipeline import KnownFaces, StageClock
    from codeformer import load_pipeline
    from codeformer.precision import configure_cpu_runtime

    applied = configure_cpu_runtime()  # what the command line does (unless --low_memory)
    clock = StageClock()
    job = config["job"]
    started = time.perf_counter()
    detector = {"aligned": None, "photos": "dlib", "video_dlib": "dlib"}.get(job, "retinaface_resnet50")
    pipe = load_pipeline("codeformer", detector=detector, device="cpu",
                         precision=config["precision"], weights_dir=config["weights"])
    load_s = time.perf_counter() - started
    if detector == "retinaface_resnet50":
        pipe.detector = KnownFaces(pipe.detector.detect, _known_faces(config))
    instrument(pipe, clock)
    options = pipe.options(upscale=2, fidelity_weight=config["fidelity_weight"])
    source = Path(config["input"])
    keep_frames = _keep_video_frames(pipe)

    def run(out: Path) -> int:
        if job in VIDEO_JOBS:
            # The frames before encoding, for the agreement check: kept in the warm-up run only.
            keep_frames["folder"] = out / FRAMES_FOLDER if out.name.endswith(WARMUP_SUFFIX) else None
            runs.restore_video_file(pipe, source, out, options, progress=False)
            return config["frames"]
        inputs = sorted(source.iterdir()) if source.is_dir() else [source]
        if job == "aligned":
            report = runs.restore_aligned_files(pipe, inputs, out / "restored_faces", options, progress=False)
        else:
            report = runs.restore_picture_files(pipe, inputs, out, options, progress=False)
        if report.failed:
            raise RuntimeError("; ".join(report.notes))
        return len(inputs)

    return _timed_twice(run, clock, config, load_s=load_s, precision=pipe.restorer.precision, runtime=applied)


def _keep_video_frames(pipe: Any) -> dict[str, Path | None]:
    """Make ``pipe.restore_video`` also save each restored frame (``.npy``) into the folder set in the
    returned dict (None: not saved), on top of the caller's ``on_frame``."""
    setting: dict[str, Path | None] = {"folder": None}
    restore_video = pipe.restore_video

    def saving(src: Any, dst: Any, *args: Any, on_frame: Any = None, **kwargs: Any) -> Any:
        folder = setting["folder"]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

        def both(index: int, result: Any) -> None:
            if on_frame is not None:
                on_frame(index, result)
            if folder is not None:
                np.save(folder / f"{index:06d}.npy", result.image)

        return restore_video(src, dst, *args, on_frame=both, **kwargs)

    pipe.restore_video = saving
    return setting


def _reference(config: dict[str, Any]) -> dict[str, Any]:
    """The reference's job (benchmarks.reference_pipeline), stages timed."""
    from benchmarks import reference_pipeline as reference

    applied = []
    if config.get("tuned"):  # for attribution only: the reference with our process settings
        from codeformer.precision import configure_cpu_runtime

        applied = configure_cpu_runtime()
    clock = reference.StageClock()
    started = time.perf_counter()
    job = config["job"]
    models = reference.load_reference_models(config["weights"], _known_faces(config))
    if job == "photos":  # dlib's faces at dlib's cost on what the helper detects on
        from codeformer.registry import load_detector

        models.detector = reference.KnownFaces(load_detector("dlib", device="cpu").detect, _known_faces(config))
    helper = reference.make_helper(models, clock, upscale_only_detection=config["upscale_only_detection"])
    load_s = time.perf_counter() - started
    source = Path(config["input"])
    w = config["fidelity_weight"]

    def run(out: Path) -> int:
        if job == "video":
            reference.restore_video_file(source, out, helper, models)
            return config["frames"]
        inputs = sorted(source.iterdir()) if source.is_dir() else [source]
        for path in inputs:
            if job == "aligned":
                reference.restore_aligned_file(path, out, helper, models, w=w)
            else:
                reference.restore_picture_file(path, out, helper, models, w=w)
        return len(inputs)

    return _timed_twice(run, clock, config, load_s=load_s, precision="fp32", runtime=applied)


def _original(config: dict[str, Any]) -> dict[str, Any]:
    """The original's own inference_codeformer.py (see the docstring), stages timed from outside."""
    from benchmarks import original
    from benchmarks.reference_pipeline import StageClock

    workdir = Path(config["workdir"])
    original.enter_workdir(workdir)
    clock = StageClock()
    original.instrument(clock)
    from facelib.utils.face_restoration_helper import FaceRestoreHelper

    # The loop over the inputs starts with the first clean_all(): what comes before is loading.
    loop_started: list[float] = []
    clean_all = FaceRestoreHelper.clean_all

    def marked_clean_all(helper: Any) -> None:
        if not loop_started:
            loop_started.append(time.perf_counter())
        clean_all(helper)

    FaceRestoreHelper.clean_all = marked_clean_all
    source = Path(config["input"])
    if config["job"] == "picture":
        # Its default RetinaFace runs on the picture (random weights: the cost), then hands on the known faces.
        from facelib.detection.retinaface.retinaface import RetinaFace

        from benchmarks.reference_pipeline import KnownFaces

        network_detect, known = RetinaFace.detect_faces, _known_faces(config)

        def detect_faces(detector: Any, image: Any, *args: Any, **kwargs: Any) -> Any:
            return KnownFaces(lambda picture: network_detect(detector, picture, *args, **kwargs), known) \
                .detect_faces(image)

        RetinaFace.detect_faces = detect_faces
    flags = {"aligned": ["--has_aligned"], "picture": []}.get(config["job"], ["--detection_model", "dlib"])
    arguments = ["-w", str(config["fidelity_weight"]), "-s", "2", *flags, "-i", str(source)]
    loads: list[float] = []

    def run(out: Path) -> int:
        loop_started.clear()
        started = time.perf_counter()
        original.run_script(workdir, [*arguments, "-o", str(out)])
        loads.append(loop_started[0] - started if loop_started else 0.0)
        return len(list(source.iterdir())) if source.is_dir() else 1

    result = _timed_twice(run, clock, config, load_s=0.0, precision="fp32", runtime=[])
    # Wall and CPU times without the timed run's model loading, as for the other sides.
    result["script_s"] = result["wall_s"]
    result["wall_s"] = round(result["wall_s"] - loads[-1], 3)
    result["load_s"] = round(loads[-1], 3)
    result.pop("cpu_s")  # the script's CPU time cannot be split from its loading: not compared
    return result


def _timed_twice(run: Any, clock: Any, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A warm-up run, then the timed one (into ``config['out']``); walls, stages, peak memory."""
    out = Path(config["out"])
    started = time.perf_counter()
    run(out.with_name(out.name + WARMUP_SUFFIX))
    first_s = time.perf_counter() - started
    clock.seconds.clear()
    cpu_started = _cpu_seconds()
    started = time.perf_counter()
    items = run(out)
    wall_s = time.perf_counter() - started
    return {"wall_s": round(wall_s, 3), "cpu_s": round(_cpu_seconds() - cpu_started, 3), "items": items,
            "first_run_s": round(first_s, 3), "stages": clock.rounded(), "peak_rss_mib": round(peak_rss_mib(), 1),
            "out": str(out), **extra}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) so far."""
    return time.process_time()


def child(config: dict[str, Any]) -> dict[str, Any]:
    sides = {"reference": _reference, "original": _original, "ours": _ours}
    return sides[config["side"]](config)


# ------------------------------------------------------------------------------------------------
# Output agreement


def _difference(ours: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    if ours.shape != reference.shape:
        return {"shape_ours": list(ours.shape), "shape_reference": list(reference.shape)}
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    return {"max": int(diff.max()), "mean": round(float(diff.mean()), 4),
            "share_differing": round(float((diff > 0).mean()), 6), "share_above_1": round(float((diff > 1).mean()), 6)}


def _worst(differences: list[dict[str, Any]]) -> dict[str, Any]:
    if any("max" not in d for d in differences):
        return {"shapes_differ": differences}
    return {"max": max(d["max"] for d in differences), "mean": round(float(np.mean([d["mean"] for d in differences])), 4),
            "share_differing": max(d["share_differing"] for d in differences),
            "share_above_1": max(d["share_above_1"] for d in differences), "compared": len(differences)}


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    import cv2

    return {path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(folder.glob("*.png"))}


def _video_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def compare_outputs(job: str, ours: Path, reference: Path) -> dict[str, Any]:
    """Our outputs against the reference's, per kind of output (8-bit levels)."""
    if job == "video_dlib":  # against the original's restored frames (PNG), before and after our encoding
        mine, theirs = _video_frames(next(ours.glob("*.mp4"))), list(_pngs(reference / "final_results").values())
        if len(mine) != len(theirs):
            return {"frames_ours": len(mine), "frames_original": len(theirs)}
        kept = sorted(ours.with_name(ours.name + WARMUP_SUFFIX).joinpath(FRAMES_FOLDER).glob("*.npy"))
        result = {"decoded_video": _worst([_difference(a, b) for a, b in zip(mine, theirs)])}
        if len(kept) == len(theirs):
            result["frames_before_encoding"] = _worst([_difference(np.load(path), png)
                                                       for path, png in zip(kept, theirs)])
        return result
    if job == "video":
        mine, theirs = _video_frames(next(ours.glob("*.mp4"))), _video_frames(next(reference.glob("*.mp4")))
        if len(mine) != len(theirs):
            return {"frames_ours": len(mine), "frames_reference": len(theirs)}
        result = {"decoded_video": _worst([_difference(a, b) for a, b in zip(mine, theirs)])}
        # Before encoding: our warm-up run's frames against the reference's final PNGs (same frames).
        kept = sorted(ours.with_name(ours.name + WARMUP_SUFFIX).joinpath(FRAMES_FOLDER).glob("*.npy"))
        pngs = _pngs(reference / "final_results")
        if kept and len(kept) == len(pngs):
            result["frames_before_encoding"] = _worst([_difference(np.load(path), png)
                                                       for path, png in zip(kept, pngs.values())])
        return result
    result = {}
    for kind in ("final_results", "restored_faces", "cropped_faces"):
        mine, theirs = _pngs(ours / kind), _pngs(reference / kind)
        if not mine and not theirs:
            continue
        if sorted(mine) != sorted(theirs):
            result[kind] = {"files_ours": sorted(mine), "files_reference": sorted(theirs)}
            continue
        result[kind] = _worst([_difference(mine[name], theirs[name]) for name in mine])
    return result


# ------------------------------------------------------------------------------------------------
# Parent


def _configs(job: str, precisions: list[str], reference_tuned: bool, original: bool) -> list[dict[str, Any]]:
    """The compared configurations of a job, in the order they are interleaved."""
    ours = [{"side": "ours", "precision": precision} for precision in (precisions if job == "aligned" else ["fp32"])]
    tuned = [{"side": "reference", "precision": "fp32", "tuned": True}] if reference_tuned else []
    theirs = [{"side": "original", "precision": "fp32"}] if original and job in ORIGINAL_JOBS else []
    if job == "video_dlib":  # the job is there for the original: the reference does not detect with dlib
        return [*ours, *theirs]
    return [*ours, {"side": "reference", "precision": "fp32"}, *tuned, *theirs]


def _label(config: dict[str, Any]) -> str:
    if config["side"] == "reference":
        return "reference tuned" if config.get("tuned") else "reference"
    if config["side"] == "original":
        return "original"
    return f"ours {config['precision']}"


def _against_original(job: str, configs: dict[str, dict[str, Any]], bf16: bool = False) -> dict[str, dict[str, Any]]:
    """Each other side's wall time per item against the original's, with issue 24's targets for ours."""
    theirs = configs.get("original", {})
    if "wall_s_min" not in theirs:
        return {}
    ratios = {}
    for label, summary in configs.items():
        if label != "original" and "wall_s_min" in summary:
            value = summary["per_item_s"] / theirs["per_item_s"]
            ratios[label] = {"value": round(value, 3), "measure": f"{label} / original wall time"}
            target = ORIGINAL_TARGETS.get((job, "auto" if label == "ours auto" and bf16 else "fp32")) \
                if label.startswith("ours") else None
            if target is not None:
                ratios[label].update(target=f"<= {target}", met=value <= target)
    return ratios


def _summarise(job: str, label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run]
    if not good:
        return {"label": label, "errors": [run["error"] for run in runs]}
    best = min(good, key=lambda run: run["wall_s"])
    per_item = best["wall_s"] / best["items"]
    summary = {"label": label, "wall_s_min": best["wall_s"], "walls_s": [run["wall_s"] for run in good],
               "items": best["items"], "per_item_s": round(per_item, 3), "cpu_s": best.get("cpu_s"),
               "cpu_s_min": min((run["cpu_s"] for run in good if "cpu_s" in run), default=None),
               "first_run_s": best["first_run_s"],
               "load_s": round(best["load_s"], 2), "stages_s": best["stages"],
               "peak_rss_mib": max(run["peak_rss_mib"] for run in good), "precision": best["precision"],
               "runtime_settings": best["runtime"], "out": best["out"]}
    if job in VIDEO_JOBS:
        summary["fps"] = round(best["items"] / best["wall_s"], 4)
    if len(good) < len(runs):
        summary["errors"] = [run["error"] for run in runs if "error" in run]
    return summary


def _print_job(job: str, entry: dict[str, Any]) -> None:
    reference = entry["configs"].get("reference", {})
    print(f"\n{job}: {entry['what']} (reference: benchmarks.reference_pipeline; original: its own script)")
    for label, summary in entry["configs"].items():
        if "wall_s_min" not in summary:
            print(f"  {label:<15} failed: {summary.get('errors')}")
            continue
        rate = f", {summary['fps']:.3f} fps" if "fps" in summary else f", {summary['per_item_s']:.2f} s each"
        if summary.get("cpu_s_min") is not None:
            rate += f", CPU {summary['cpu_s_min']:.1f} s"
        stages = " ".join(f"{name} {summary['stages_s'][name]:.2f}" for name in STAGES if name in summary["stages_s"])
        print(f"  {label:<15} {summary['wall_s_min']:7.2f} s{rate}; peak RSS {summary['peak_rss_mib']:.0f} MiB; "
              f"stages: {stages}")
    for label, ratio in entry.get("ratios", {}).items():
        target = f"; target {ratio['target']}: {'meets' if ratio['met'] else 'misses'}" if "target" in ratio else ""
        cpu = f"; in CPU time {ratio['cpu_value']:.3f}" if "cpu_value" in ratio else ""
        print(f"  {label}: {ratio['value']:.3f} ({ratio['measure']}{target}{cpu})")
    for label, ratio in entry.get("against_original", {}).items():
        target = f"; target {ratio['target']}: {'meets' if ratio['met'] else 'misses'}" if "target" in ratio else ""
        print(f"  {label} vs original: {ratio['value']:.3f} ({ratio['measure']}{target})")
    if "wall_s_min" in reference:
        for label, agreement in entry.get("agreement", {}).items():
            print(f"  agreement {label} vs reference: {json.dumps(agreement)}")
    agreement_original = entry.get("agreement_original", {})
    if isinstance(agreement_original, str):
        print(f"  agreement with the original: not compared ({agreement_original})")
    else:
        for label, agreement in agreement_original.items():
            print(f"  agreement {label} vs original: {json.dumps(agreement)}")
    if "original_not_run" in entry:
        print(f"  original: not run ({entry['original_not_run']})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, 2 aligned faces, 2 video frames")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per configuration (default 2; quick 1)")
    parser.add_argument("--jobs", nargs="+", choices=ALL_JOBS,
                        help=f"default: {' '.join(JOBS)}; with --original: {' '.join(ORIGINAL_JOBS)}")
    parser.add_argument("--original", type=Path, metavar="DIR",
                        help="also run sczhou/CodeFormer's own inference_codeformer.py from this checkout "
                             "(see benchmarks/original.py for its setup)")
    parser.add_argument("--photos", nargs="+", type=Path, default=list(DEFAULT_PHOTOS),
                        help="the photos job's pictures (default: two of inputs/whole_imgs)")
    parser.add_argument("--aligned-faces", type=int, help="aligned crops restored per run (default 3; quick 2)")
    parser.add_argument("--frames", type=int, help="video frames (default 4; quick 2)")
    parser.add_argument("--upscale-only-detection", action="store_true",
                        help="the reference detects as before 2024-09 (pictures only enlarged to a 640 short side, "
                             "never reduced)")
    parser.add_argument("--reference-tuned", action="store_true",
                        help="also run the reference after configure_cpu_runtime (our process settings), to show "
                             "how much of the difference they make; not part of the ratios")
    parser.add_argument("--lookup-faces", action="store_true",
                        help="find the faces with dlib now instead of using the listed ones (minutes, 12 GB)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the jobs not run now from the existing output file (each job records its date and load)")
    parser.add_argument("--keep", type=Path, help="keep inputs, weights and outputs in this (new) folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    if args.keep is not None:
        args.keep.mkdir(parents=True)  # a new folder: outputs of an earlier run would be compared otherwise
    if args.original is not None:
        from benchmarks.original import check_original

        args.original = check_original(args.original)  # before minutes of set-up
    jobs = args.jobs or list(ORIGINAL_JOBS if args.original is not None else JOBS)

    from benchmarks.faces import group_photo, video_frame
    from codeformer.precision import cpu_has_native_bf16

    repeats = args.repeats or (1 if args.quick else 2)
    aligned_faces = args.aligned_faces or (2 if args.quick else 3)
    frames = args.frames or (2 if args.quick else 4)
    bf16 = cpu_has_native_bf16()
    load_before = load_average()
    if args.lookup_faces:
        known_picture, known_frame = lookup_faces(group_photo()), lookup_faces(video_frame(CLIP_SIZE))
    else:
        known_picture, known_frame = _rows(GROUP_PHOTO_FACES), _rows(VIDEO_FRAME_FACES)
    known = [[list(group_photo().shape[:2]), known_picture.tolist()],
             [[CLIP_SIZE[1], CLIP_SIZE[0]], known_frame.tolist()]]
    photos = [photo.absolute() for photo in args.photos]
    report: dict[str, Any] = {
        "benchmark": "end_to_end",
        "weights": "random CodeFormer, RetinaFace ResNet-50 (zero classification head) and ParseNet, official layouts",
        "faces": "dlib's faces of each picture handed to both pipelines at the cost of RetinaFace (KnownFaces); "
                 "photos: dlib's detector (ours, original), dlib's faces at dlib's cost (reference)",
        "reference_detection": "upscale only (before 2024-09)" if args.upscale_only_detection
        else "short side resized to 640 (reference since a75e7ae, 2024-09)",
        "repeats": repeats, "jobs": {},
    }
    if args.original is not None:
        from benchmarks.original import checkout_commit

        report["original"] = {"checkout": str(args.original), "commit": checkout_commit(args.original),
                              "runs": "its inference_codeformer.py, through runpy in a fresh process per run"}
    whats = {
        "picture": f"2000x1500 JPEG, {len(known_picture)} faces, -w 0.5 -s 2, default flags, fp32",
        "aligned": f"{aligned_faces} aligned 512x512 crops, --has_aligned",
        "video": f"{frames} frames of 1280x720 at {CLIP_FPS} fps, one face, no audio, -s 2, H.264 CRF 18 medium",
        "video_dlib": f"{frames} frames of the 1280x720 clip, -s 2, dlib detection, fp32; ours: the mp4 in and out; "
                      "the original: the decoded frames as PNG files (its video path extracts them with ffmpeg "
                      "first, which is not counted)",
        "photos": f"{len(photos)} whole photos ({', '.join(photo.name for photo in photos)}), "
                  f"-w {PHOTOS_FIDELITY} -s 2, dlib detection, fp32",
    }
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="end_to_end_") as folder:
        root = args.keep if args.keep is not None else Path(folder)
        weights = write_weights(root / "weights")
        inputs = write_inputs(root, aligned_faces, frames, photos)
        workdir = None
        if args.original is not None:
            from benchmarks.original import make_workdir

            workdir = make_workdir(args.original, root / "original_work", weights)
        if "photos" in jobs:
            known += lookup_photo_faces(Path(inputs["photos"]))  # dlib, once: for the reference's KnownFaces
        print(f"inputs and random weights written in {time.perf_counter() - started_all:.0f} s", flush=True)
        for job in jobs:
            job_load_before, job_started = load_average(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
            precisions = ["fp32", "auto"] if job == "aligned" else ["fp32"]
            configs = _configs(job, precisions, args.reference_tuned, workdir is not None)
            runs: dict[str, list[dict[str, Any]]] = {_label(c): [] for c in configs}
            for repeat in range(repeats):
                for config in configs:
                    label = _label(config)
                    out = root / "out" / f"{job}_{label.replace(' ', '_')}_{repeat}"
                    source = inputs[FRAMES_INPUT] if job == "video_dlib" and config["side"] == "original" \
                        else inputs[job]
                    child_config = {**config, "job": job, "weights": str(weights), "input": source,
                                    "known": known, "frames": frames, "out": str(out),
                                    "fidelity_weight": PHOTOS_FIDELITY if job == "photos" else DEFAULT_FIDELITY,
                                    "workdir": str(workdir) if workdir is not None else None,
                                    "upscale_only_detection": args.upscale_only_detection}
                    started = time.perf_counter()
                    result = run_child("benchmarks.bench_end_to_end", child_config)
                    note = result.get("error") or f"{result['wall_s']:.2f} s timed"
                    print(f"  {job} {label} #{repeat + 1}: {note} ({time.perf_counter() - started:.0f} s in all)",
                          flush=True)
                    runs[label].append(result)
            entry: dict[str, Any] = {"what": whats[job], "started": job_started, "load_before": job_load_before,
                                     "load_after": load_average(), "repeats": repeats,
                                     "reference_detection": report["reference_detection"],
                                     "configs": {label: _summarise(job, label, results) for label, results in runs.items()}}
            entry["ratios"] = _ratios(job, entry["configs"], bf16)
            entry["against_original"] = _against_original(job, entry["configs"], bf16)
            reference = entry["configs"].get("reference", {})
            if "out" in reference:
                entry["agreement"] = {label: compare_outputs(job, Path(summary["out"]), Path(reference["out"]))
                                      for label, summary in entry["configs"].items()
                                      if label.startswith("ours") and "out" in summary}
            theirs = entry["configs"].get("original", {})
            if job in ORIGINAL_NOT_COMPARED:
                entry["agreement_original"] = ORIGINAL_NOT_COMPARED[job]
            elif "out" in theirs:
                entry["agreement_original"] = {
                    label: compare_outputs(job, Path(summary["out"]), Path(theirs["out"]))
                    for label, summary in entry["configs"].items() if label != "original" and "out" in summary}
            if workdir is not None and job in ORIGINAL_NOT_RUN:
                entry["original_not_run"] = ORIGINAL_NOT_RUN[job]
            for summary in entry["configs"].values():
                summary.pop("out", None)
            report["jobs"][job] = entry
            _print_job(job, entry)
    report["total_s"] = round(time.perf_counter() - started_all, 1)
    if args.merge and args.output.is_file():
        earlier = json.loads(args.output.read_text(encoding="utf-8"))
        report["jobs"] = {**{job: entry for job, entry in earlier.get("jobs", {}).items() if job not in report["jobs"]},
                          **report["jobs"]}
        report["merged"] = "jobs not run now are kept from an earlier run (each job has its own date and load)"
    report["machine"] = describe_machine()
    report["load_before"] = load_before
    report["load_after"] = load_average()
    print(f"\nCPU: {report['machine']['cpu']}; load average before {load_before}, after {report['load_after']}")
    save_report(report, args.output)
    return report


def _ratios(job: str, configs: dict[str, dict[str, Any]], bf16: bool) -> dict[str, dict[str, Any]]:
    """Ours against the reference, with the issue's targets."""
    reference = configs.get("reference", {})
    ratios = {}
    if "wall_s_min" not in reference:
        return ratios
    for label, summary in configs.items():
        if not label.startswith("ours") or "wall_s_min" not in summary:
            continue
        cpu = (summary["cpu_s_min"] / summary["items"]) / (reference["cpu_s_min"] / reference["items"]) \
            if summary.get("cpu_s_min") and reference.get("cpu_s_min") else None
        if job == "video":
            value = summary["fps"] / reference["fps"]
            ratios[label] = {"value": round(value, 3), "measure": "ours / reference frames per second",
                             "target": f">= {TARGET_VIDEO_FPS}", "met": value >= TARGET_VIDEO_FPS}
            if cpu:
                ratios[label]["cpu_value"] = round(1 / cpu, 3)
            continue
        value = summary["per_item_s"] / reference["per_item_s"]
        if job == "photos":  # no target: the job is there for the original
            ratios[label] = {"value": round(value, 3), "measure": "ours / reference wall time"}
            if cpu:
                ratios[label]["cpu_value"] = round(cpu, 3)
            continue
        target = TARGET_PICTURE if job == "picture" else TARGET_ALIGNED_FP32
        if job == "aligned" and label == "ours auto":
            if not bf16:
                target = TARGET_ALIGNED_FP32  # auto is fp32 on CPUs without bf16: the fp32 target applies
            else:
                target = TARGET_ALIGNED_AUTO
        ratios[label] = {"value": round(value, 3), "measure": "ours / reference wall time",
                         "target": f"<= {target}", "met": value <= target}
        if cpu:
            ratios[label]["cpu_value"] = round(cpu, 3)
    return ratios


if __name__ == "__main__":
    main()
