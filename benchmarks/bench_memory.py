"""Peak memory and time of the command line on small work: 512x512 pictures and a 256x256, 6-frame video.

Each run is ``codeformer restore ...`` (the command's own ``main``) in a fresh process, default flags
(``-w 0.5 -s 2``, RetinaFace ResNet-50, ParseNet, fp32 and ``--precision auto``) on one picture, a
folder of four and the video, with random weights
in the official layouts. Random RetinaFace weights find no face, so its ``detect`` is wrapped: the
network still runs on every picture (its memory and time count), then the astronaut's face is
returned at its known place (dlib's five points, scaled to the picture), so restoration, parsing and
paste-back run as on a real photo.

``--allocator`` compares the process's memory allocator set-ups:

- ``glibc-tuned``: what the command does (:func:`codeformer.precision.configure_cpu_runtime`);
- ``glibc``: glibc's defaults (``reuse_memory=False``);
- ``jemalloc`` / ``tcmalloc``: the library preloaded (``LD_PRELOAD``), when installed (Debian:
  ``libjemalloc2``, ``libtcmalloc-minimal4``).

Usage, from the repository root::

    python -m benchmarks.bench_memory [--allocators glibc-tuned glibc] [--precisions fp32 auto] [--repeats 2]

Prints a table (peak resident memory, wall time) and writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, load_average, peak_rss_mib, run_child, save_report  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "memory.json"
PICTURE_SIZE = 512
VIDEO_SIZE = 256
VIDEO_FRAMES = 6
FOLDER_PICTURES = 4  # memory that grows from picture to picture shows over a folder
TARGET_MIB = 2.5 * 1024  # issue 16: default runs at these sizes under 2.5 GB
PRELOADS = {
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}


def make_inputs(folder: Path) -> dict[str, Path]:
    """The astronaut as a 512x512 PNG, a folder of four (mirrored, shifted) and a 256x256, 6-frame clip with audio."""
    import cv2
    import numpy as np

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from video_factory import make_clip

    from benchmarks.faces import astronaut_bgr

    picture = folder / "astronaut.png"
    cv2.imwrite(str(picture), astronaut_bgr())
    pictures = folder / "pictures"
    pictures.mkdir()
    for index in range(FOLDER_PICTURES):
        cv2.imwrite(str(pictures / f"astronaut_{index}.png"), np.roll(astronaut_bgr(), 3 * index, axis=1))
    clip = folder / "astronaut.mp4"
    small = cv2.resize(astronaut_bgr(), (VIDEO_SIZE, VIDEO_SIZE), interpolation=cv2.INTER_AREA)
    make_clip(clip, frames=VIDEO_FRAMES, fps=25, size=(VIDEO_SIZE, VIDEO_SIZE), audio="aac", image=small)
    return {"picture": picture, "folder": pictures, "video": clip}


def make_weights(folder: Path) -> Path:
    """Random CodeFormer, ParseNet and RetinaFace (no-face heads) files in the official layout."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import write_codeformer_checkpoint

    from benchmarks.bench_picture import random_weights_root
    from benchmarks.faces import _random_retinaface_state

    root = random_weights_root(folder)
    write_codeformer_checkpoint(root / "CodeFormer" / "codeformer.pth")
    torch.save(_random_retinaface_state(), root / "facelib" / "detection_Resnet50_Final.pth")
    return root


def _astronaut_face_detector() -> None:
    """Make RetinaFace return the astronaut's face (after running its network) in dlib's point order."""
    from benchmarks.faces import ASTRONAUT_DLIB_LANDMARKS
    from codeformer.face import detection, retinaface

    network_detect = retinaface.RetinaFaceDetector.detect

    def detect(self, image):  # noqa: ANN001, ANN202
        network_detect(self, image)  # the cost being measured
        scale = image.shape[1] / PICTURE_SIZE
        points = ASTRONAUT_DLIB_LANDMARKS * scale
        box = [*(points.min(axis=0) - 40 * scale), *(points.max(axis=0) + 40 * scale)]
        return [detection.DetectedFace(box=box, score=0.99, landmarks=points)]

    retinaface.RetinaFaceDetector.detect = detect
    retinaface.RetinaFaceDetector.template_name = detection.TEMPLATE_DLIB
    retinaface.RetinaFaceDetector.shifted_eye_distance = False  # the eye filter reads dlib's points


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One command line run in this fresh process: its wall time and peak resident memory."""
    from codeformer import cli, precision

    _astronaut_face_detector()
    if config["allocator"] != "glibc-tuned":
        tuned = precision.configure_cpu_runtime
        precision.configure_cpu_runtime = lambda **kwargs: tuned(**{**kwargs, "reuse_memory": False})
    argv = ["restore", "-i", config["input"], "-o", config["output"], "--weights_dir", config["weights"],
            "--precision", config["precision"]]
    started = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - started
    return {"exit_code": code, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_rss_mib(), 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--allocators", nargs="+", default=["glibc-tuned", "glibc"],
                        choices=["glibc-tuned", "glibc", *PRELOADS])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--work", nargs="+", default=["picture", "folder", "video"],
                        choices=["picture", "folder", "video"])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, interleaved (min kept)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    load_before = load_average()
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        inputs, weights = make_inputs(root), make_weights(root / "weights")
        for repeat in range(args.repeats):
            for work in args.work:
                for precision in args.precisions:
                    for allocator in args.allocators:
                        env = dict(os.environ)
                        if allocator in PRELOADS:
                            if not Path(PRELOADS[allocator]).exists():
                                continue
                            env["LD_PRELOAD"] = PRELOADS[allocator]
                        config = {"allocator": allocator, "precision": precision, "input": str(inputs[work]),
                                  "weights": str(weights), "output": str(root / f"out_{work}_{repeat}_{precision}_{allocator}")}
                        run = run_child("benchmarks.bench_memory", config, env=env)
                        runs.setdefault((work, precision, allocator), []).append(run)
                        print(f"{work:<8} {precision:<5} {allocator:<12} {json.dumps(run)}", flush=True)
    table = []
    for (work, precision, allocator), tries in runs.items():
        good = [run for run in tries if "error" not in run and run["exit_code"] == 0]
        row = {"work": work, "precision": precision, "allocator": allocator, "runs": tries}
        if good:
            row["seconds"] = min(run["seconds"] for run in good)
            row["peak_rss_mib"] = max(run["peak_rss_mib"] for run in good)
            row["under_target"] = row["peak_rss_mib"] <= TARGET_MIB
        table.append(row)
    print(f"\n{'work':<8} {'precision':<9} {'allocator':<12} {'seconds':>8} {'peak MiB':>9}")
    for row in table:
        print(f"{row['work']:<8} {row['precision']:<9} {row['allocator']:<12} "
              f"{row.get('seconds', float('nan')):>8.2f} {row.get('peak_rss_mib', float('nan')):>9.0f}")
    report = {
        "benchmark": "memory",
        "work": {"picture": f"{PICTURE_SIZE}x{PICTURE_SIZE} PNG, one face",
                 "folder": f"{FOLDER_PICTURES} such pictures",
                 "video": f"{VIDEO_SIZE}x{VIDEO_SIZE}, {VIDEO_FRAMES} frames, H.264 + AAC, one face"},
        "command": "codeformer restore -i INPUT -o OUT --precision P (defaults: -w 0.5 -s 2, retinaface_resnet50, parse)",
        "target_peak_mib": TARGET_MIB,
        "rows": table,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    save_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
