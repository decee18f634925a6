"""Video restoration speed and peak memory: a 720p clip with one face through the whole pipeline.

The clip is the astronaut photo in the middle of a 1280x720 frame (:func:`benchmarks.faces.video_frame`),
sliding a few pixels per frame with slight noise, 30 fps, AAC audio (``tests/video_factory.py``). Every frame goes through
:func:`codeformer.restoration.restore_frames` inside :func:`codeformer.video.transform_video`,
as the command line runs videos: detection at the cost of the default RetinaFace ResNet-50 (with the
faces dlib finds, see :class:`benchmarks.faces.TimedRetinaFace`; ``--detector dlib`` for dlib's own
CNN detector, about 14 s per 720p frame here), random CodeFormer and ParseNet weights in the official
layouts, ``-w 0.5 -s 2``, H.264 encoding, audio copied.

A 10 s clip (300 frames) takes a long time on two CPU cores, so by default only ``--frames``
frames are made and processed; per-frame cost is
constant along a clip (no state but the codec's), so the time for the full 10 s clip is
extrapolated as ``300 / fps``. Peak memory does not grow with the length (streaming). Each
precision runs in a fresh process, after :func:`codeformer.precision.configure_cpu_runtime` (as the
command line runs) unless ``--untuned``; models are warmed up on one frame first.

Usage, from the repository root::

    python -m benchmarks.bench_video [--frames 8] [--seconds 10] [--precisions fp32 bf16] [--untuned]
                                     [--detector retinaface|dlib]

Prints a table and writes ``benchmarks/results/video.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, load_average, peak_rss_mib, run_child, save_report  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "video.json"
CLIP_FPS = 30
CLIP_SIZE = (1280, 720)  # (width, height)
UPSCALE = 2
FIDELITY_WEIGHT = 0.5
BATCH_FRAMES = 4  # frames per restore_frames call (the command's --batch_size default)


def make_clip(path: Path, frames: int) -> None:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from video_factory import make_clip as write_clip

    from benchmarks.faces import video_frame

    write_clip(path, frames=frames, fps=CLIP_FPS, size=CLIP_SIZE, audio="aac", image=video_frame(CLIP_SIZE))


def child(config: dict[str, Any]) -> dict[str, Any]:
    """The whole clip through the pipeline in this fresh process; fps and peak memory."""
    import numpy as np

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import random_codeformer

    from benchmarks.bench_picture import random_weights_root
    from benchmarks.faces import TimedRetinaFace
    from codeformer.archs import CodeFormerConfig
    from codeformer.registry import load_detector
    from codeformer.registry import load_parser
    from codeformer.options import RestoreOptions
    from codeformer.restoration import Models, restore_frames
    from codeformer.precision import configure_cpu_runtime
    from codeformer.restorer import FaceRestorer
    from codeformer.video import transform_video

    applied = configure_cpu_runtime() if config["tuned"] else []
    baseline_mib = peak_rss_mib()
    restorer = FaceRestorer(random_codeformer(CodeFormerConfig(), seed=0), "cpu", precision=config["precision"])
    with tempfile.TemporaryDirectory() as folder:
        parser = load_parser(device="cpu", weights_dir=random_weights_root(Path(folder)))
    detector = TimedRetinaFace() if config["detector"] == "retinaface" else load_detector("dlib", device="cpu")
    models = Models(restorer, detector, parser, batch_size=BATCH_FRAMES)
    options = RestoreOptions(fidelity_weight=FIDELITY_WEIGHT, upscale=UPSCALE)
    warm = np.full((512, 512, 3), 128, np.uint8)
    parser.masks(restorer.restore_crops([warm], fidelity_weight=FIDELITY_WEIGHT))  # oneDNN set-up, not part of the rate
    faces = []

    def process_batch(frames: list) -> list:
        results = restore_frames(frames, models, options)
        faces.extend(len(result.faces) for result in results)
        return [result.image for result in results]

    stats = transform_video(config["src"], config["dst"], process_batch, batch_frames=BATCH_FRAMES, progress=False)
    return {
        "runtime_settings": applied,
        "precision": restorer.precision,
        "frames": stats.frames_out,
        "faces_per_frame": sorted(set(faces)),
        "seconds": round(stats.seconds, 2),
        "fps": round(stats.frames_out / stats.seconds, 4),
        "seconds_per_frame": round(stats.seconds / stats.frames_out, 2),
        "audio": list(stats.audio),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_imports_mib": round(baseline_mib, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames made and processed (default 8)")
    parser.add_argument("--detector", choices=("retinaface", "dlib"), default="retinaface",
                        help="detection cost measured: the default RetinaFace (with dlib's faces), or dlib's CNN")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length to extrapolate to (default 10)")
    parser.add_argument("--precisions", nargs="+", help="default: fp32, and bf16 where the CPU has it natively")
    parser.add_argument("--untuned", action="store_true", help="without configure_cpu_runtime (library defaults)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    from codeformer.precision import cpu_has_native_bf16

    precisions = args.precisions or ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    full_frames = round(args.seconds * CLIP_FPS)
    load_before = load_average()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / "clip_720p.mp4"
        make_clip(src, args.frames)
        for precision in precisions:
            config = {"precision": precision, "tuned": not args.untuned, "src": str(src), "detector": args.detector,
                      "dst": str(Path(folder) / f"out_{precision}.mp4")}
            started = time.perf_counter()
            run = {"precision": precision, **run_child("benchmarks.bench_video", config)}
            if "error" in run:
                print(f"{precision}: failed: {run['error']}")
            else:
                run["extrapolated_clip_seconds"] = round(full_frames / run["fps"], 1)
                print(f"{precision:<6} {run['frames']} frames in {run['seconds']:.1f} s: {run['fps']:.3f} fps "
                      f"({run['seconds_per_frame']:.1f} s/frame), peak RSS {run['peak_rss_mib']:.0f} MiB; "
                      f"a {args.seconds:g} s clip ({full_frames} frames) would take about "
                      f"{run['extrapolated_clip_seconds'] / 60:.0f} min", flush=True)
            run["process_wall_s"] = round(time.perf_counter() - started, 1)
            runs.append(run)
    report = {
        "benchmark": "video",
        "clip": {"width": CLIP_SIZE[0], "height": CLIP_SIZE[1], "fps": CLIP_FPS, "frames_measured": args.frames,
                 "extrapolated_to_seconds": args.seconds, "audio": "aac", "faces": 1},
        "pipeline": f"{args.detector} detection, random CodeFormer + ParseNet (official layouts), -w 0.5 -s 2, "
                    "H.264 CRF 18",
        "tuned": not args.untuned,
        "runs": runs,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    save_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
