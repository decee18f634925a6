"""Paste-back speed: 10 faces into a 12-megapixel photo at -s 2 (target: under 2 s).

Times :func:`codeformer.face.pasteback.paste_faces` (bounding-box path) on a 4000x3000 photo upscaled
to 8000x6000, with and without parse masks, and the full-frame reference recipe on one face only (it
costs several seconds per face at that size), then checks that both paths give the same pixels.
Prints the numbers and writes them, with a short machine description, to
``benchmarks/results/pasteback.json``::

    python benchmarks/bench_pasteback.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.machine import describe_machine, save_report  # noqa: E402
from codeformer.face.alignment import FACE_SIZE, warp_face  # noqa: E402
from codeformer.face.pasteback import (  # noqa: E402
    PastedFace,
    parse_labels_to_mask,
    paste_faces,
    paste_faces_full_frame,
)

TARGET_SECONDS = 2.0  # 10 faces, 12 MP photo, -s 2
FACE_SIDE = 300  # px at 1x: a face in a group photo of that size (eyes about 75 px apart)
FACE_COLUMNS = 5  # faces on a 5 x 2 grid
MAX_TILT_DEGREES = 25.0
SKIN_CLASS = 1  # ParseNet class kept by the parse mask
PARSE_INSET = 60  # px of the 512 crop left out of the synthetic parse labels (background around the face)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "pasteback.json"


def photo(width: int, height: int) -> np.ndarray:
    """A textured BGR uint8 photo: skimage's astronaut, enlarged, plus fine noise."""
    rng = np.random.default_rng(0)
    base = cv2.resize(np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1]), (width, height),
                      interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-8, 9, base.shape, dtype=np.int16)
    return np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def alignment(center: tuple[float, float], side: float, degrees: float) -> np.ndarray:
    """Alignment affine (picture -> 512 crop) of a face of ``side`` px centred at ``center``."""
    angle = np.deg2rad(degrees)
    linear = side / FACE_SIZE * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    translation = np.asarray(center) - linear @ np.array([FACE_SIZE / 2, FACE_SIZE / 2])
    return cv2.invertAffineTransform(np.hstack([linear, translation[:, None]]))


def faces_on_grid(picture: np.ndarray, count: int, with_parse: bool) -> list[PastedFace]:
    """``count`` faces spread over the picture; each "restored" face is its own crop (identity)."""
    rng = np.random.default_rng(1)
    height, width = picture.shape[:2]
    rows = -(-count // FACE_COLUMNS)
    labels = np.zeros((FACE_SIZE, FACE_SIZE), np.int64)
    labels[PARSE_INSET:-PARSE_INSET, PARSE_INSET:-PARSE_INSET] = SKIN_CLASS
    mask = parse_labels_to_mask(labels) if with_parse else None
    faces = []
    for index in range(count):
        column, row = index % FACE_COLUMNS, index // FACE_COLUMNS
        center = ((column + 0.5) * width / FACE_COLUMNS, (row + 0.5) * height / rows)
        affine = alignment(center, FACE_SIDE, rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES))
        faces.append(PastedFace(warp_face(picture, affine), affine, mask))
    return faces


def timed(function: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def machine() -> dict[str, object]:
    return {
        **describe_machine(),
        "opencv_threads": cv2.getNumThreads(),
        "load_average_1min": os.getloadavg()[0],  # the machine is shared: context for the timings
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--upscale", type=int, default=2)
    parser.add_argument("--faces", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    picture = photo(args.width, args.height)
    resize_s, canvas = timed(lambda: cv2.resize(picture, (args.width * args.upscale, args.height * args.upscale),
                                                interpolation=cv2.INTER_LINEAR))
    print(f"photo {args.width}x{args.height}, canvas {canvas.shape[1]}x{canvas.shape[0]} (-s {args.upscale}), "
          f"{args.faces} faces of {FACE_SIDE} px; background resize {resize_s:.3f} s (the caller's)")

    results: dict[str, object] = {}
    for with_parse in (True, False):
        faces = faces_on_grid(picture, args.faces, with_parse)
        runs = [timed(lambda: paste_faces(canvas, faces, upscale=args.upscale))[0] for _ in range(args.repeats)]
        name = "bbox_parse" if with_parse else "bbox_no_parse"
        results[name] = {"faces": args.faces, "first_s": runs[0], "median_s": statistics.median(runs),
                         "min_s": min(runs), "runs_s": runs}
        print(f"{name:>14}: first {runs[0]:.3f} s, median {statistics.median(runs):.3f} s, min {min(runs):.3f} s "
              f"(target < {TARGET_SECONDS} s)")

    one_face = faces_on_grid(picture, args.faces, with_parse=True)[:1]
    full_s, full = timed(lambda: paste_faces_full_frame(canvas, one_face, upscale=args.upscale))
    bbox_s, bbox = timed(lambda: paste_faces(canvas, one_face, upscale=args.upscale))
    identical = bool(np.array_equal(full, bbox))
    results["full_frame_one_face"] = {"faces": 1, "seconds": full_s, "bbox_seconds": bbox_s, "identical": identical}
    print(f"full frame, 1 face: {full_s:.3f} s (bounding box: {bbox_s:.3f} s); identical pixels: {identical}")

    parse_median = results["bbox_parse"]["median_s"]  # type: ignore[index]
    report = {
        "benchmark": "pasteback",
        "photo": [args.width, args.height],
        "upscale": args.upscale,
        "canvas": [canvas.shape[1], canvas.shape[0]],
        "face_side_px": FACE_SIDE,
        "background_resize_s": resize_s,
        "target_s": TARGET_SECONDS,
        "meets_target": bool(parse_median < TARGET_SECONDS),
        "results": results,
        "machine": machine(),
    }
    save_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
