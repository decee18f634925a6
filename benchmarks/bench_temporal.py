"""Video flicker with and without temporal smoothing, on a clip made from a real face photo.

The clip is scikit-image's astronaut (a real face, public domain), 512x512, moved by a slow pan
(``--pan`` px per frame) plus a random sub-pixel shake, with per-frame sensor noise; a few frames in
the middle are blurred so hard that the detector misses the face. Every frame is detected with dlib's
CNN detector (the one detector that finds real faces without downloaded weights; detections are
made once per frame and shared by both runs), then restored by a random-weight CodeFormer in the
official layout, blended with the square soft mask (no parsing), at ``-s 1``:

- ``per-frame``: every frame aligned on its own detections (``--no_temporal_smoothing``);
- ``smoothed``: faces tracked and their landmarks smoothed, missed frames filled in (the default).

Flicker is the mean absolute frame-to-frame change (8-bit levels) inside the face region after the
known motion (pan and shake) is undone, so a still face scores only what the restoration adds; the
input's own figure (noise alone) is printed for scale. ``unrestored`` counts frames inside the face's
track where no face was restored.

Usage, from the repository root::

    python -m benchmarks.bench_temporal [--frames 24] [--pan 0.5] [--output benchmarks/results/temporal.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, save_report  # noqa: E402

SIDE = 512
NOISE_LEVELS = 2.0  # std of the per-frame sensor noise, 8-bit levels
SHAKE_PX = 0.35  # std of the per-frame sub-pixel shake
BLUR_SIGMA = 9.0  # frames blurred this much lose their face to the detector
FACE_REGION = (170, 60, 270, 170)  # x1, y1, x2, y2 of the astronaut's face in the photo, shrunk inside the face


def make_clip(frames: int, pan: float, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    """Frames (BGR uint8), their (F, 2) known displacements, and the indices of the blurred frames."""
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    rng = np.random.default_rng(seed)
    blurred = list(range(frames // 2, frames // 2 + 2))
    shifts, clip = [], []
    for index in range(frames):
        shift = np.array([pan * index, 0.0]) + rng.normal(0, SHAKE_PX, 2)
        moved = cv2.warpAffine(photo, np.float64([[1, 0, shift[0]], [0, 1, shift[1]]]), (SIDE, SIDE),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        noisy = np.clip(moved + rng.normal(0, NOISE_LEVELS, moved.shape), 0, 255).astype(np.uint8)
        if index in blurred:
            noisy = cv2.GaussianBlur(noisy, (0, 0), BLUR_SIGMA)
        shifts.append(shift)
        clip.append(noisy)
    return clip, np.array(shifts), blurred


class CachedDetector:
    """A detector that remembers its faces per frame, so both runs see the same detections."""

    def __init__(self, detector: Any) -> None:
        self._detector = detector
        self.name = detector.name
        self.template_name = detector.template_name
        self._cache: dict[bytes, list] = {}

    def detect(self, image: np.ndarray) -> list:
        key = image.tobytes()[::997]  # a sparse fingerprint: frames differ everywhere (noise)
        if key not in self._cache:
            self._cache[key] = self._detector.detect(image)
        return self._cache[key]


def flicker(frames: list[np.ndarray], shifts: np.ndarray, skip: list[int]) -> float:
    """Mean |frame t+1 - frame t| in the face region after undoing the known motion; pairs in ``skip`` left out."""
    x1, y1, x2, y2 = FACE_REGION
    changes = []
    for index in range(len(frames) - 1):
        if index in skip or index + 1 in skip:
            continue
        back = shifts[index] - shifts[index + 1]  # moves frame t+1 onto frame t
        aligned = cv2.warpAffine(frames[index + 1], np.float64([[1, 0, back[0]], [0, 1, back[1]]]),
                                 (frames[index].shape[1], frames[index].shape[0]), flags=cv2.INTER_LINEAR)
        region = (slice(y1, y2), slice(int(x1 + shifts[index][0]), int(x2 + shifts[index][0])))
        changes.append(np.abs(aligned[region].astype(np.float64) - frames[index][region]).mean())
    return float(np.mean(changes))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--pan", type=float, default=0.5, help="pan speed, pixels per frame")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "temporal.json")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import VARIANTS, random_codeformer

    from codeformer.face.detection import load_detector
    from codeformer.face.pipeline import Models, RestoreOptions, restore_pictures
    from codeformer.face.temporal import TemporalFaceRestorer
    from codeformer.imageio import Picture
    from codeformer.restorer import FaceRestorer

    clip, shifts, blurred = make_clip(args.frames, args.pan)
    detector = CachedDetector(load_detector("dlib", device="cpu"))
    models = Models(FaceRestorer(random_codeformer(VARIANTS["codeformer"], seed=1), "cpu"), detector, batch_size=4)
    options = RestoreOptions(upscale=1)

    started = time.perf_counter()
    per_frame = restore_pictures([Picture(frame, None, 3) for frame in clip], models, options)
    per_frame_s = time.perf_counter() - started
    processor = TemporalFaceRestorer(models, options)
    started = time.perf_counter()
    smoothed_images = []
    for start in range(0, len(clip), 4):
        smoothed_images += processor.process(clip[start:start + 4])
    smoothed_images += processor.flush()
    smoothed_s = time.perf_counter() - started  # detections are cached by now: restoration only

    missed = [i for i, result in enumerate(per_frame) if not result.faces]
    results = {
        "input": {"flicker": flicker(clip, shifts, blurred)},
        "per_frame": {"flicker": flicker([r.image for r in per_frame], shifts, blurred),
                      "unrestored_frames": missed, "seconds": round(per_frame_s, 1)},
        "smoothed": {"flicker": flicker(smoothed_images, shifts, blurred),
                     "unrestored_frames": [], "seconds_without_detection": round(smoothed_s, 1)},
    }
    # Frames where the smoothed run restored no face: re-run cheaply by checking the tracker's output.
    counted: list[int] = []
    processor = TemporalFaceRestorer(models, options, on_frame=lambda i, r: counted.append(i) if not r.faces else None)
    for start in range(0, len(clip), 4):
        processor.process(clip[start:start + 4])
    processor.flush()
    results["smoothed"]["unrestored_frames"] = counted
    ratio = results["smoothed"]["flicker"] / results["per_frame"]["flicker"]
    report = {
        "benchmark": "temporal",
        "machine": describe_machine(),
        "clip": {"frames": args.frames, "size": SIDE, "pan_px_per_frame": args.pan, "shake_px": SHAKE_PX,
                 "noise_levels": NOISE_LEVELS, "blurred_frames": blurred},
        "results": results,
        "flicker_ratio_smoothed_over_per_frame": round(ratio, 3),
    }
    print(f"flicker (mean |change| in the face, 8-bit levels): input {results['input']['flicker']:.2f}, "
          f"per-frame {results['per_frame']['flicker']:.2f}, smoothed {results['smoothed']['flicker']:.2f} "
          f"(ratio {ratio:.2f})")
    print(f"frames without a restored face: per-frame {missed}, smoothed {counted} (blurred: {blurred})")
    save_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
