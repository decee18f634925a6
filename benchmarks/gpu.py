"""GPU speed in one run (under 5 minutes): faces per second by batch and precision, whole pictures, 1080p video.

Measured through the library, with random weights in the official layouts (no download; speed does
not depend on the weight values):

- faces: :class:`codeformer.restorer.FaceRestorer` as :func:`codeformer.load_pipeline` builds it, at
  batch 1, 8 and 16 in fp32, fp16 and bf16, then the same with ``compile=True`` (``--compile``);
  ``faces_per_s`` is :meth:`FaceRestorer.restore` on uint8 crops (host to device and back included),
  ``network_faces_per_s`` the network alone on a batch already on the device;
- picture: :meth:`Pipeline.restore` of the 2000x1500 group photo with five faces
  (:func:`benchmarks.faces.group_photo`), ``-w 0.5 -s 2``, RetinaFace ResNet-50 + ParseNet (in memory:
  no file reading or writing);
- video: :func:`codeformer.jobs.local.restore_video_file` (what the command line runs: decoding, tracking,
  restoration, paste-back and H.264 encoding in their threads) on a synthetic 1080p clip with one face
  (:func:`benchmarks.faces.video_frame`, sliding and noisy, as ``bench_video`` makes them), output 4K;
  ``io_only_fps`` is the same clip decoded, resized 2x and encoded without faces: the ceiling the
  video job cannot pass with this decoding and encoding.

Picture and video runs also give the time per stage (detect, align, restore, parse, paste; host wall
time, see :func:`benchmarks.bench_end_to_end.instrument`).

A random RetinaFace finds no faces, so the detector runs on each picture for its cost and the faces
come from where the astronaut photo was pasted (its dlib landmarks carried into each tile, see
:func:`placed_faces`), through :class:`benchmarks.reference_pipeline.KnownFaces`.

Each configuration is warmed up (the first call, which for ``compile`` includes compilation, is
reported as ``first_call_s``) and then timed for at least ``--seconds`` with ``torch.cuda.synchronize``
around the timing. Configurations left when ``--budget`` seconds have passed are skipped and listed
(the compiled ones come last). Targets of issue 17 on an H100/H200: at least 200 faces/s at batch 16 in
half precision, 30 frames/s for 1080p one-face video end to end.

Usage, from the repository root::

    python -m benchmarks.gpu                      # on a CUDA machine
    python -m benchmarks.gpu --device cpu --quick # smoke test of every path at tiny sizes (a few minutes on
                                                  # two cores, most of it torch.compile)

Writes ``benchmarks/results/gpu.json`` (``--output``): the GPU's name, torch / CUDA / cuDNN versions,
every number above.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, save_report  # noqa: E402
from benchmarks.reference_pipeline import StageClock  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "gpu.json"
FIDELITY_WEIGHT = 0.5  # -w
UPSCALE = 2  # -s
TARGET_FACES_PER_S = 200.0  # batch 16, half precision, H100/H200
TARGET_VIDEO_FPS = 30.0  # 1080p, one face, end to end
ASTRONAUT_SIZE = 512  # side of skimage's astronaut photo, in which ASTRONAUT_DLIB_LANDMARKS are given
BOX_PER_EYE_SPAN = 1.4  # dlib's box side / the span of its eye corners, on the astronaut
MIRRORED_ORDER = (2, 3, 0, 1, 4)  # dlib's 5 points of a mirrored face: the two eyes swap
COMPILE_RESERVE_S = 75.0  # a compiled configuration starts only with this much budget left
FULL_BUDGET_S = 270.0  # leaves time for start-up and the last configuration within 5 minutes


@dataclass(frozen=True)
class Sizes:
    """What is measured: full (GPU) or quick (a smoke test of every path)."""

    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    pipeline_precisions: tuple[str, ...]
    latent_size: int  # CodeFormer tokens: 256 for the official 512 px network, 16 for a 128 px one
    picture_size: tuple[int, int]  # (width, height)
    picture_faces: tuple[tuple[int, int, int, bool], ...]  # (centre x, centre y, side, mirrored)
    video_size: tuple[int, int]
    video_frames: int
    warmup_frames: int
    seconds: float  # least timed time per configuration
    min_calls: int  # least timed calls per configuration
    compile_batches: tuple[int, ...] = field(default=())
    compile_precisions: tuple[str, ...] = field(default=())  # in this order: the targets are about half precision


def full_sizes() -> Sizes:
    from benchmarks.faces import GROUP_FACES, GROUP_SIZE

    return Sizes(batches=(1, 8, 16), precisions=("fp32", "fp16", "bf16"), pipeline_precisions=("fp32", "auto"),
                 latent_size=256, picture_size=GROUP_SIZE, picture_faces=GROUP_FACES, video_size=(1920, 1080),
                 video_frames=90, warmup_frames=8, seconds=2.0, min_calls=3, compile_batches=(1, 8, 16),
                 compile_precisions=("bf16", "fp16", "fp32"))


def quick_sizes() -> Sizes:
    return Sizes(batches=(1, 2), precisions=("fp32", "fp16", "bf16"), pipeline_precisions=("fp32",),
                 latent_size=16, picture_size=(640, 480), picture_faces=((200, 240, 260, False), (470, 230, 240, True)),
                 video_size=(480, 270), video_frames=3, warmup_frames=2, seconds=0.0, min_calls=1,
                 compile_batches=(1,), compile_precisions=("fp32",))


# ------------------------------------------------------------------------------------------------
# Material


def placed_faces(faces: Sequence[tuple[int, int, int, bool]]) -> np.ndarray:
    """RetinaFace-style rows (K, 15) for astronauts pasted as :func:`benchmarks.faces.group_photo` pastes them.

    The astronaut's dlib landmarks are carried through each tile's resize (pixel centres:
    ``(p + 0.5) * side / 512 - 0.5``), mirroring and placement; the box is a square around them
    about the size dlib gives.
    """
    from benchmarks.faces import ASTRONAUT_DLIB_LANDMARKS
    from benchmarks.reference_pipeline import face_rows

    boxes, points = [], []
    for cx, cy, side, mirrored in faces:
        landmarks = ASTRONAUT_DLIB_LANDMARKS.copy()
        if mirrored:
            landmarks[:, 0] = ASTRONAUT_SIZE - 1 - landmarks[:, 0]
            landmarks = landmarks[list(MIRRORED_ORDER)]
        landmarks = (landmarks + 0.5) * side / ASTRONAUT_SIZE - 0.5 + (cx - side // 2, cy - side // 2)
        centre = landmarks.mean(axis=0)
        half = BOX_PER_EYE_SPAN * np.ptp(landmarks[:4, 0]) / 2
        boxes.append([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])
        points.append(landmarks)
    return face_rows(np.array(boxes), np.array(points))


def video_face(size: tuple[int, int]) -> tuple[int, int, int, bool]:
    """Where :func:`benchmarks.faces.video_frame` puts the astronaut in a frame of ``size``."""
    from benchmarks.faces import VIDEO_FACE

    width, height = size
    return (width // 2, height // 2, min(VIDEO_FACE[2], height), False)


def write_weights(root: Path, latent_size: int) -> Path:
    """Random CodeFormer (``latent_size`` tokens), RetinaFace ResNet-50 and ParseNet in the official layouts."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import WRAPPER_KEY, random_codeformer, write_codeformer_checkpoint

    from benchmarks.bench_picture import random_weights_root
    from benchmarks.faces import _random_retinaface_state
    from codeformer.archs import CodeFormerConfig

    codeformer = root / "CodeFormer" / "codeformer.pth"
    if latent_size == CodeFormerConfig().latent_size:
        write_codeformer_checkpoint(codeformer)
    else:  # a network for smaller faces, same layers: for smoke tests
        codeformer.parent.mkdir(parents=True, exist_ok=True)
        torch.save({WRAPPER_KEY: random_codeformer(CodeFormerConfig(latent_size=latent_size)).state_dict()}, codeformer)
    detector = root / "facelib" / "detection_Resnet50_Final.pth"
    detector.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_random_retinaface_state(), detector)
    return random_weights_root(root)


# ------------------------------------------------------------------------------------------------
# Timing


class Budget:
    """Seconds left for the whole run; configurations that would start after it are skipped."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable[[], object], device: Any, seconds: float, min_calls: int) -> tuple[float, int]:
    """Seconds per call over at least ``min_calls`` calls and ``seconds`` seconds, synchronised."""
    _synchronize(device)
    started = time.perf_counter()
    calls = 0
    while calls < min_calls or time.perf_counter() - started < seconds:
        call()
        calls += 1
        _synchronize(device)
    return (time.perf_counter() - started) / calls, calls


def _first_call(call: Callable[[], object], device: Any) -> float:
    _synchronize(device)
    started = time.perf_counter()
    call()
    _synchronize(device)
    return time.perf_counter() - started


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------------
# Measurements


def measure_faces(weights: Path, device: Any, precision: str, compile: bool, batches: Sequence[int], sizes: Sizes,
                  budget: Budget, reserve: float = 0.0) -> list[dict[str, Any]]:
    """Faces per second of one restorer (precision, compile) at each batch size.

    A batch size is skipped when fewer than ``reserve`` seconds of the budget are left (a compilation
    takes about a minute).
    """
    from benchmarks.faces import real_face_crops
    from codeformer import load_pipeline
    from codeformer.errors import CodeFormerError
    from codeformer.restorer import crops_to_batch

    base = {"precision": precision, "compile": compile}
    if budget.left() <= reserve:
        return [{**base, "batch": batch, "skipped": "time budget spent"} for batch in batches]
    try:
        pipe = load_pipeline("codeformer", detector=None, device=str(device), precision=precision, compile=compile,
                             weights_dir=weights)
    except CodeFormerError as error:
        print(_face_line({**base, "skipped": str(error)}), flush=True)
        return [{**base, "skipped": str(error)}]
    restorer = pipe.restorer
    size = restorer.input_size
    crops = [crop if crop.shape[0] == size else _resized(crop, size) for _, crop in real_face_crops()]
    results = []
    for batch in batches:
        entry = {**base, "batch": batch, "resolved_precision": restorer.precision}
        if budget.left() <= reserve:
            results.append({**entry, "skipped": "time budget spent"})
            continue
        faces = [crops[i % len(crops)] for i in range(batch)]
        _reset_peak(device)
        restore = functools.partial(restorer.restore_crops, faces, fidelity_weight=FIDELITY_WEIGHT, batch_size=batch)
        first = _first_call(restore, device)
        _first_call(restore, device)  # a second warm-up call (allocator, autotuning)
        per_call, calls = _timed(restore, device, sizes.seconds, sizes.min_calls)
        network = functools.partial(_network_only, restorer, crops_to_batch(faces, device))
        _first_call(network, device)
        network_per_call, _ = _timed(network, device, sizes.seconds, sizes.min_calls)
        results.append({**entry, "faces_per_s": round(batch / per_call, 2),
                        "network_faces_per_s": round(batch / network_per_call, 2),
                        "first_call_s": round(first, 3), "timed_calls": calls,
                        "compiled": getattr(restorer, "compiled", False), "peak_gpu_mib": _peak_mib(device)})
        print(_face_line(results[-1]), flush=True)
    return results


def _network_only(restorer: Any, batch: Any) -> object:
    """The restore call without the host copies: the network on a batch already on the device."""
    import torch

    with torch.inference_mode():
        return restorer._forward(batch, FIDELITY_WEIGHT, True)


def _resized(crop: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _face_line(entry: dict[str, Any]) -> str:
    label = f"{entry['precision']}{' compiled' if entry['compile'] else ''} batch {entry.get('batch', '-')}"
    if "skipped" in entry:
        return f"faces {label}: skipped ({entry['skipped']})"
    return (f"faces {label}: {entry['faces_per_s']:.1f} faces/s ({entry['network_faces_per_s']:.1f} network only), "
            f"first call {entry['first_call_s']:.2f} s")


CLOCK = StageClock()  # stage times of the picture and video runs (benchmarks.bench_end_to_end.instrument)


def _pipeline(weights: Path, device: Any, precision: str, known: dict[tuple[int, int], np.ndarray]) -> Any:
    from benchmarks.bench_end_to_end import instrument
    from benchmarks.reference_pipeline import KnownFaces
    from codeformer import load_pipeline

    pipe = load_pipeline("codeformer", detector="retinaface_resnet50", device=str(device), precision=precision,
                         weights_dir=weights)
    pipe.detector = KnownFaces(pipe.detector.detect, known)  # RetinaFace's cost, the pasted faces
    instrument(pipe, CLOCK)
    return pipe


def _stages(calls: int = 1) -> dict[str, float]:
    """Seconds per call in each stage since the clock was cleared (host wall time; the GPU work is
    synchronised where results come back to the host: detections, restored crops, masks)."""
    return {name: round(seconds / calls, 4) for name, seconds in CLOCK.seconds.items()}


def measure_picture(weights: Path, device: Any, precision: str, sizes: Sizes, budget: Budget) -> dict[str, Any]:
    """Pictures per second of Pipeline.restore on the group photo."""
    from benchmarks.faces import group_photo
    from codeformer.errors import CodeFormerError

    entry: dict[str, Any] = {"precision": precision, "size": list(sizes.picture_size),
                             "faces_placed": len(sizes.picture_faces)}
    if budget.left() <= 0:
        return {**entry, "skipped": "time budget spent"}
    picture = group_photo(sizes.picture_faces, size=sizes.picture_size)
    try:
        pipe = _pipeline(weights, device, precision, {picture.shape[:2]: placed_faces(sizes.picture_faces)})
    except CodeFormerError as error:
        print(f"picture {precision}: skipped ({error})", flush=True)
        return {**entry, "skipped": str(error)}
    found: list[int] = []

    def restore() -> object:
        result = pipe.restore(picture, fidelity_weight=FIDELITY_WEIGHT, upscale=UPSCALE)
        found.append(len(result.faces))
        return result

    _reset_peak(device)
    first = _first_call(restore, device)
    CLOCK.seconds.clear()
    per_call, calls = _timed(restore, device, sizes.seconds, sizes.min_calls)
    entry.update({"resolved_precision": pipe.restorer.precision, "faces_restored": found[-1],
                  "pictures_per_s": round(1 / per_call, 3), "seconds_per_picture": round(per_call, 3),
                  "first_call_s": round(first, 3), "timed_calls": calls, "stages_s_per_picture": _stages(calls),
                  "peak_gpu_mib": _peak_mib(device)})
    print(f"picture {precision}: {entry['pictures_per_s']:.2f} pictures/s ({per_call:.3f} s, "
          f"{found[-1]} faces)", flush=True)
    return entry


def measure_video(weights: Path, device: Any, precision: str, sizes: Sizes, folder: Path,
                  budget: Budget) -> dict[str, Any]:
    """Frames per second of the command line's video job on a synthetic one-face clip."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from video_factory import make_clip

    from benchmarks.faces import video_frame
    from codeformer.errors import CodeFormerError
    from codeformer.jobs.local import restore_video_file

    width, height = sizes.video_size
    entry: dict[str, Any] = {"precision": precision, "size": [width, height], "frames": sizes.video_frames,
                             "output_size": [width * UPSCALE, height * UPSCALE]}
    if budget.left() <= 0:
        return {**entry, "skipped": "time budget spent"}
    clips = {}
    for name, frames in (("warmup", sizes.warmup_frames), ("timed", sizes.video_frames)):
        clips[name] = folder / f"clip_{width}x{height}_{frames}.mp4"
        if not clips[name].is_file():
            make_clip(clips[name], frames=frames, fps=30, size=sizes.video_size, audio=None,
                      image=video_frame(sizes.video_size))
    try:
        pipe = _pipeline(weights, device, precision, {(height, width): placed_faces([video_face(sizes.video_size)])})
    except CodeFormerError as error:
        print(f"video {precision}: skipped ({error})", flush=True)
        return {**entry, "skipped": str(error)}
    options = pipe.options(upscale=UPSCALE)
    _reset_peak(device)
    started = time.perf_counter()
    restore_video_file(pipe, clips["warmup"], folder / f"out_warmup_{precision}", options, progress=False)
    warmup_s = time.perf_counter() - started
    _synchronize(device)
    CLOCK.seconds.clear()
    started = time.perf_counter()
    restore_video_file(pipe, clips["timed"], folder / f"out_{precision}", options, progress=False)
    _synchronize(device)
    seconds = time.perf_counter() - started
    entry.update({"resolved_precision": pipe.restorer.precision, "fps": round(sizes.video_frames / seconds, 3),
                  "seconds": round(seconds, 3), "warmup_clip_s": round(warmup_s, 3),
                  "stages_s_per_frame": _stages(sizes.video_frames), "peak_gpu_mib": _peak_mib(device)})
    if "io_only_fps" not in IO_ONLY:
        IO_ONLY["io_only_fps"] = _io_only_fps(clips["timed"], folder / "out_io_only.mp4", sizes.video_frames)
    entry["io_only_fps"] = IO_ONLY["io_only_fps"]
    print(f"video {width}x{height} {precision}: {entry['fps']:.2f} frames/s ({sizes.video_frames} frames in "
          f"{seconds:.1f} s; decode + 2x resize + encode alone: {entry['io_only_fps']:.1f} frames/s)", flush=True)
    return entry


IO_ONLY: dict[str, float] = {}  # measured once per run


def _io_only_fps(src: Path, dst: Path, frames: int) -> float:
    """Frames per second of the video job without faces: decode, resize to the output size, encode.

    The ceiling the video pipeline cannot pass while decoding and encoding stay as they are.
    """
    import cv2

    from codeformer.video import transform_video

    def upscale(batch: list[np.ndarray]) -> list[np.ndarray]:
        return [cv2.resize(frame, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_LINEAR) for frame in batch]

    started = time.perf_counter()
    transform_video(src, dst, upscale, progress=False)
    return round(frames / (time.perf_counter() - started), 3)


# ------------------------------------------------------------------------------------------------


def _software(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update({"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
                     "gpu_capability": f"{properties.major}.{properties.minor}",
                     "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                     "cudnn_benchmark": torch.backends.cudnn.benchmark})
    return info


def _device(name: str) -> Any:
    """The torch device, or one line saying why not (exits)."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks.gpu: no CUDA GPU visible to PyTorch {torch.__version__} (CUDA build "
                         f"{torch.version.cuda}); run it on a GPU machine, or `--device cpu --quick` for a smoke test")
    return torch.device(name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="every path at tiny sizes (a 128 px network, batches 1-2, a small picture, 3 frames)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile configurations")
    parser.add_argument("--budget", type=float,
                        help=f"seconds for the whole run; what is left after it is skipped (default {FULL_BUDGET_S:g}; "
                             "--quick: none)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    device = _device(args.device)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = quick_sizes() if args.quick else full_sizes()
    budget = Budget(args.budget if args.budget is not None else FULL_BUDGET_S if not args.quick else float("inf"))
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "gpu", "device": str(device), "quick": args.quick, **_software(device),
                              "weights": "random, official layouts" + (" (128 px CodeFormer)" if args.quick else ""),
                              "faces": [], "picture": [], "video": [], "skipped_by_budget": []}
    print(f"{report.get('gpu', device)}: torch {report['torch']}, CUDA {report['cuda']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as folder:
        root = Path(folder)
        weights = write_weights(root / "weights", sizes.latent_size)
        for precision in sizes.precisions:
            report["faces"] += measure_faces(weights, device, precision, False, sizes.batches, sizes, budget)
        for precision in sizes.pipeline_precisions:
            report["picture"].append(measure_picture(weights, device, precision, sizes, budget))
            report["video"].append(measure_video(weights, device, precision, sizes, root, budget))
        if not args.no_compile:
            for precision in sizes.compile_precisions:
                report["faces"] += measure_faces(weights, device, precision, True, sizes.compile_batches, sizes, budget,
                                                 reserve=COMPILE_RESERVE_S if not args.quick else 0.0)
    for kind in ("faces", "picture", "video"):
        report["skipped_by_budget"] += [entry for entry in report[kind] if entry.get("skipped") == "time budget spent"]
    if report["skipped_by_budget"]:
        print(f"skipped for time (--budget): {len(report['skipped_by_budget'])} configurations, listed in the JSON")
    report["targets"] = _targets(report)
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["machine"] = describe_machine()
    for line in report["targets"]["lines"]:
        print(line)
    print(f"total {report['total_s']:.0f} s")
    save_report(report, args.output)
    return report


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 17's GPU aims against the best measured numbers (meaningful on an H100/H200 only)."""
    half = [entry["faces_per_s"] for entry in report["faces"]
            if entry.get("batch") == 16 and entry.get("resolved_precision") in ("fp16", "bf16") and "faces_per_s" in entry]
    video = [entry["fps"] for entry in report["video"] if "fps" in entry and entry["size"] == [1920, 1080]]
    lines = []
    best_faces = max(half) if half else None
    best_fps = max(video) if video else None
    if best_faces is not None:
        lines.append(f"batch 16 half precision: {best_faces:.1f} faces/s (aim {TARGET_FACES_PER_S:.0f})")
    if best_fps is not None:
        lines.append(f"1080p one-face video: {best_fps:.1f} frames/s (aim {TARGET_VIDEO_FPS:.0f})")
    return {"faces_per_s_batch16_half": best_faces, "video_1080p_fps": best_fps, "lines": lines}


if __name__ == "__main__":
    main()
