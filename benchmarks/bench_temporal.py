"""Video flicker with and without temporal smoothing, on a clip made from a real face photo.

The clip is scikit-image's astronaut (a real face, public domain), 512x512, moved by a slow pan
(``--pan`` px per frame) plus a random sub-pixel shake, with per-frame sensor noise; a few frames in
the middle are blurred so hard that the detector misses the face. Every frame is detected with dlib's
CNN detector (the one detector that finds real faces without downloaded weights; detections are
made once per frame and shared by both runs), then restored by a random-weight CodeFormer in the
official layout, and by an "anchored" stand-in for a trained restorer (always the same face, in the crop's
frame: a random network flips its code tokens with every bit of sensor noise, which would drown out
what alignment does), blended with the square soft mask (no parsing), at ``-s 1``:

- ``per-frame``: every frame aligned on its own detections (``--no_temporal_smoothing``);
- ``smoothed``: faces tracked and their landmarks smoothed, missed frames filled in (the default).

Flicker is the mean absolute frame-to-frame change (8-bit levels) inside the face region after the
known pan is undone: what remains is the shake (jitter a viewer sees), the noise and whatever the
restoration adds. The figure with the shake undone too is recorded as well; the input's own figures
are printed for scale. ``unrestored`` counts frames inside the face's
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


class AnchoredRestorer:
    """A stand-in for a trained restorer: always the same restored face, drawn in the crop's frame.

    A trained CodeFormer gives nearly the same face for nearly the same input, anchored to the
    aligned crop; a random-weight one flips its code tokens with every bit of sensor noise, which
    would drown out what alignment does. This restorer keeps only the part smoothing is about: the
    face moves exactly as its crop moves.
    """

    name = "anchored"
    input_size = SIDE
    supports_fidelity = True
    precision = "fp32"

    def __init__(self) -> None:
        from codeformer.face.alignment import FFHQ_TEMPLATE_5
        from codeformer.imageio import read_image

        self.template = FFHQ_TEMPLATE_5
        self._face = read_image(REPO_ROOT / "inputs" / "cropped_faces" / "astronaut_aligned.png").bgr8()

    def restore_crops(self, crops: list, *, fidelity_weight: float | None = None, batch_size: int = 4) -> list:
        return [self._face.copy() for _ in crops]

    def describe(self) -> str:
        return "a fixed face"


class CachedDetector:
    """A detector that remembers its faces per frame, so both runs see the same detections."""

    def __init__(self, detector: Any) -> None:
        self._detector = detector
        self.name = detector.name
        self.template_name = detector.template_name
        self._cache: dict[bytes, list] = {}

    def __getattr__(self, name: str) -> Any:
        # The wrapped detector's policy (resize_for_detection, row_dtype ...): find_faces treats both alike.
        return getattr(self._detector, name)

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
    parser.add_argument("--skip_codeformer", action="store_true", help="measure the anchored restorer only")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "temporal.json")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import VARIANTS, random_codeformer

    from codeformer.registry import load_detector
    from codeformer.options import RestoreOptions
    from codeformer.restoration import Models, restore_whole_pictures
    from codeformer.temporal import TemporalFaceRestorer
    from codeformer.imageio import Picture
    from codeformer.restorer import FaceRestorer

    clip, shifts, blurred = make_clip(args.frames, args.pan)
    detector = CachedDetector(load_detector("dlib", device="cpu"))
    anchored = AnchoredRestorer()
    restorers = {"anchored": anchored}
    if not args.skip_codeformer:
        restorers["random_codeformer"] = FaceRestorer(random_codeformer(VARIANTS["codeformer"], seed=1), "cpu")
    options = RestoreOptions(upscale=1)
    pans = np.stack([np.array([args.pan * index, 0.0]) for index in range(args.frames)])  # the pan alone
    results: dict[str, Any] = {"input": {"flicker": round(flicker(clip, pans, blurred), 3),
                                         "flicker_all_motion_undone": round(flicker(clip, shifts, blurred), 3)}}
    for label, restorer in restorers.items():
        models = Models(restorer, detector, batch_size=4)
        started = time.perf_counter()
        per_frame = restore_whole_pictures([Picture(frame, None, 3) for frame in clip], models, options)
        per_frame_s = time.perf_counter() - started
        unrestored: list[int] = []
        processor = TemporalFaceRestorer(models, options,
                                         on_frame=lambda i, r: unrestored.append(i) if not r.faces else None)
        started = time.perf_counter()
        smoothed = []
        for start in range(0, len(clip), 4):
            smoothed += processor.process(clip[start:start + 4])
        smoothed += processor.flush()
        smoothed_s = time.perf_counter() - started
        per_frame_flicker = flicker([r.image for r in per_frame], pans, blurred)
        smoothed_flicker = flicker(smoothed, pans, blurred)
        results[label] = {
            "per_frame": {"flicker": round(per_frame_flicker, 3),
                          "flicker_all_motion_undone": round(flicker([r.image for r in per_frame], shifts, blurred), 3),
                          "unrestored_frames": [i for i, r in enumerate(per_frame) if not r.faces],
                          "seconds": round(per_frame_s, 1)},
            "smoothed": {"flicker": round(smoothed_flicker, 3),
                         "flicker_all_motion_undone": round(flicker(smoothed, shifts, blurred), 3),
                         "unrestored_frames": unrestored, "seconds": round(smoothed_s, 1)},
            "flicker_ratio": round(smoothed_flicker / per_frame_flicker, 3),
        }
    report = {
        "benchmark": "temporal",
        "machine": describe_machine(),
        "clip": {"frames": args.frames, "size": SIDE, "pan_px_per_frame": args.pan, "shake_px": SHAKE_PX,
                 "noise_levels": NOISE_LEVELS, "blurred_frames": blurred},
        "results": results,
    }
    for label in restorers:
        entry = results[label]
        print(f"{label}: flicker (mean |change| in the face, 8-bit levels) per-frame {entry['per_frame']['flicker']:.2f}, "
              f"smoothed {entry['smoothed']['flicker']:.2f} (ratio {entry['flicker_ratio']:.2f}); frames without a "
              f"restored face: per-frame {entry['per_frame']['unrestored_frames']}, smoothed "
              f"{entry['smoothed']['unrestored_frames']}")
    print(f"input: {results['input']['flicker']:.2f} (noise alone: {results['input']['flicker_all_motion_undone']:.2f}); "
          f"blurred frames: {blurred}")
    save_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
