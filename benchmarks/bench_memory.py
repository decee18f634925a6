"""Peak memory and time of the command line: small work (512x512 pictures, a 256x256, 6-frame video) and big photos.

Each run is ``codeformer restore ...`` (the command's own ``main``) in a fresh process, default flags
(``-w 0.5 -s 2``, RetinaFace ResNet-50, ParseNet, fp32 and ``--precision auto``) on one picture, a
folder of four and the video, with random weights
in the official layouts. Random RetinaFace weights find no face, so its ``detect`` is wrapped: the
network still runs on every picture (its memory and time count), then the astronaut's face is
returned at its known place (dlib's five points, scaled to the picture), so restoration, parsing and
paste-back run as on a real photo.

``--photos 12 50 108 150`` adds 4:3 JPEG photos of that many megapixels (the astronaut, half the
photo's height, on a textured background) restored with ``-s 1`` by each of ``--detectors``
(default RetinaFace ResNet-50, dlib, YOLOv5n; random RetinaFace and YOLOv5n weights wrapped as above,
dlib real): the whole-picture path at the sizes ``--max_pixels`` allows (issue 27: under 4 GiB).

``--allocator`` compares the process's memory allocator set-ups:

- ``glibc-tuned``: what the command does (:func:`codeformer.precision.configure_cpu_runtime`);
- ``glibc``: glibc's defaults (``reuse_memory=False``);
- ``jemalloc`` / ``tcmalloc``: the library preloaded (``LD_PRELOAD``), when installed (Debian:
  ``libjemalloc2``, ``libtcmalloc-minimal4``).

Usage, from the repository root::

    python -m benchmarks.bench_memory [--allocators glibc-tuned glibc] [--precisions fp32 auto] [--repeats 2]
    python -m benchmarks.bench_memory --work --photos 12 50 108 150 --allocators glibc-tuned --precisions fp32

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
from typing import Any, Iterator

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
PHOTO_MEGAPIXELS = (12, 50, 108, 150)  # up to the default --max_pixels (150 MP)
PHOTO_DETECTORS = ("retinaface_resnet50", "dlib", "YOLOv5n")
PHOTO_UPSCALE = 1  # -s 2 on a photo over 37.5 MP is over the default --max_pixels
PHOTO_TARGET_MIB = 4 * 1024  # issue 27: whole photos up to 150 MP under 4 GiB, whatever the detector
PHOTO_ASPECT = (4, 3)  # width : height, a camera's
PHOTO_FACE_FRACTION = 0.5  # the astronaut's side, as a fraction of the photo's height
PHOTO_JPEG_QUALITY = 90
PHOTO_BAND_ROWS = 1024  # rows of background made at a time (the parent's memory stays small too)
# Detectors whose random weights find nothing: wrapped to return the astronaut (module, class).
WRAPPED_DETECTORS = {
    "retinaface_resnet50": ("codeformer.face.retinaface", "RetinaFaceDetector"),
    "YOLOv5n": ("codeformer.face.yolov5face", "YOLOv5FaceDetector"),
}
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


def photo_size(megapixels: int) -> tuple[int, int]:
    """(width, height) of a 4:3 photo of at most ``megapixels`` million pixels, as large as that allows."""
    across, down = PHOTO_ASPECT
    unit = int((megapixels * 1e6 / (across * down)) ** 0.5)
    return across * unit, down * unit


def make_photo(path: Path, megapixels: int) -> dict[str, Any]:
    """A 4:3 JPEG photo with the astronaut in the middle; its size and the face's dlib landmarks in it."""
    import cv2
    import numpy as np

    from benchmarks.faces import ASTRONAUT_DLIB_LANDMARKS, astronaut_bgr

    width, height = photo_size(megapixels)
    side = int(height * PHOTO_FACE_FRACTION)
    x0, y0 = (width - side) // 2, (height - side) // 2
    photo = np.empty((height, width, 3), np.uint8)
    rng = np.random.default_rng(1)
    columns = np.linspace(60, 200, width, dtype=np.float32)[None, :, None]  # (1, W, 1): a soft gradient
    for top in range(0, height, PHOTO_BAND_ROWS):
        rows = min(PHOTO_BAND_ROWS, height - top)
        noise = rng.integers(-6, 7, (rows, width, 3), dtype=np.int8)  # texture, not a flat wall
        photo[top:top + rows] = np.clip(columns + noise, 0, 255).astype(np.uint8)
    photo[y0:y0 + side, x0:x0 + side] = cv2.resize(astronaut_bgr(), (side, side), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, PHOTO_JPEG_QUALITY])
    landmarks = ASTRONAUT_DLIB_LANDMARKS * (side / PICTURE_SIZE) + [x0, y0]
    return {"path": path, "width": width, "height": height, "landmarks": landmarks.tolist()}


def make_weights(folder: Path) -> Path:
    """Random CodeFormer, ParseNet, RetinaFace (no-face heads) and YOLOv5n files in the official layout."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import write_codeformer_checkpoint

    from benchmarks.faces import _random_retinaface_state
    from codeformer.face.parsing import build_parsenet
    from codeformer.face.yolov5face import build_yolov5face
    from codeformer.registry import model_spec

    root = folder
    parsenet = root / model_spec("parsenet", "parser").weights[0]
    parsenet.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_parsenet().state_dict(), parsenet)
    write_codeformer_checkpoint(root / "CodeFormer" / "codeformer.pth")
    torch.save(_random_retinaface_state(), root / "facelib" / "detection_Resnet50_Final.pth")
    torch.manual_seed(0)
    torch.save(build_yolov5face("YOLOv5n").state_dict(), root / "facelib" / "yolov5n-face.pth")
    return root


def _known_face_detector(detector: str, landmarks: Any = None, width: int = PICTURE_SIZE) -> None:
    """Make a detector with random weights return the astronaut's face (after running its network).

    ``landmarks``: dlib's five points of the face in a picture ``width`` pixels wide (default: the
    512x512 astronaut), scaled to whatever copy the detector is given; dlib's point order.
    """
    import importlib

    import numpy as np

    from benchmarks.faces import ASTRONAUT_DLIB_LANDMARKS
    from codeformer.face import detection

    if detector not in WRAPPED_DETECTORS:
        return  # dlib: the real detector
    module, name = WRAPPED_DETECTORS[detector]
    cls = getattr(importlib.import_module(module), name)
    network_detect, network_detect_batch = cls.detect, getattr(cls, "detect_batch", None)
    known = ASTRONAUT_DLIB_LANDMARKS if landmarks is None else np.asarray(landmarks, dtype=np.float64)

    def astronaut(image):  # noqa: ANN001, ANN202
        scale = image.shape[1] / width
        points = known * scale
        margin = 40 * scale * (np.ptp(known[:, 0]) / np.ptp(ASTRONAUT_DLIB_LANDMARKS[:, 0]))
        box = [*(points.min(axis=0) - margin), *(points.max(axis=0) + margin)]
        return [detection.DetectedFace(box=box, score=0.99, landmarks=points)]

    def detect(self, image):  # noqa: ANN001, ANN202
        network_detect(self, image)  # the cost being measured
        return astronaut(image)

    def detect_batch(self, images):  # noqa: ANN001, ANN202
        network_detect_batch(self, images)  # YOLOv5's detect goes through here
        return [astronaut(image) for image in images]

    cls.detect = detect
    if network_detect_batch is not None:
        cls.detect_batch = detect_batch
    cls.template_name = detection.TEMPLATE_DLIB
    cls.shifted_eye_distance = False  # the eye filter reads dlib's points
    cls.row_dtype = np.float32  # the points are not whole pixels


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One command line run in this fresh process: its wall time and peak resident memory."""
    from codeformer import cli, precision

    detector = config.get("detector", "retinaface_resnet50")
    _known_face_detector(detector, config.get("landmarks"), config.get("width", PICTURE_SIZE))
    if config["allocator"] != "glibc-tuned":
        tuned = precision.configure_cpu_runtime
        precision.configure_cpu_runtime = lambda **kwargs: tuned(**{**kwargs, "reuse_memory": False})
    argv = ["restore", "-i", config["input"], "-o", config["output"], "--weights_dir", config["weights"],
            "--precision", config["precision"]]
    if "upscale" in config:
        argv += ["-s", str(config["upscale"]), "--detection_model", detector]
    started = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - started
    return {"exit_code": code, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_rss_mib(), 1)}


def _configs(args: argparse.Namespace, root: Path, inputs: dict[str, Path],
             weights: Path) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(row key, child config) of every run, photos made as they are first needed."""
    photos: dict[int, dict[str, Any]] = {}
    for repeat in range(args.repeats):
        for work in [*args.work, *(f"photo{megapixels}" for megapixels in args.photos)]:
            detectors = args.detectors if work.startswith("photo") else ["retinaface_resnet50"]
            for detector in detectors:
                for precision in args.precisions:
                    for allocator in args.allocators:
                        if allocator in PRELOADS and not Path(PRELOADS[allocator]).exists():
                            continue
                        config = {"allocator": allocator, "precision": precision, "weights": str(weights),
                                  "output": str(root / f"out_{work}_{detector}_{repeat}_{precision}_{allocator}")}
                        if work.startswith("photo"):
                            megapixels = int(work[len("photo"):])
                            if megapixels not in photos:
                                photos[megapixels] = make_photo(root / f"photo_{megapixels}mp.jpg", megapixels)
                            photo = photos[megapixels]
                            config.update(input=str(photo["path"]), detector=detector, upscale=PHOTO_UPSCALE,
                                          landmarks=photo["landmarks"], width=photo["width"])
                        else:
                            config["input"] = str(inputs[work])
                        yield (work, detector, precision, allocator), config


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--allocators", nargs="+", default=["glibc-tuned", "glibc"],
                        choices=["glibc-tuned", "glibc", *PRELOADS])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--work", nargs="*", default=["picture", "folder", "video"],
                        choices=["picture", "folder", "video"], help="small work (none: photos only)")
    parser.add_argument("--photos", nargs="*", type=int, default=[], metavar="MEGAPIXELS",
                        help=f"photos to restore with -s {PHOTO_UPSCALE}, e.g. {' '.join(map(str, PHOTO_MEGAPIXELS))}")
    parser.add_argument("--detectors", nargs="+", default=list(PHOTO_DETECTORS), choices=list(PHOTO_DETECTORS),
                        help="the photos' detectors")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration, interleaved (min kept)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    load_before = load_average()
    runs: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        inputs, weights = make_inputs(root), make_weights(root / "weights")
        for key, config in _configs(args, root, inputs, weights):
            env = dict(os.environ)
            if key[-1] in PRELOADS:
                env["LD_PRELOAD"] = PRELOADS[key[-1]]
            run = run_child("benchmarks.bench_memory", config, env=env)
            runs.setdefault(key, []).append(run)
            print(" ".join(f"{part:<12}" for part in key), json.dumps(run), flush=True)
    table = []
    for (work, detector, precision, allocator), tries in runs.items():
        good = [run for run in tries if "error" not in run and run["exit_code"] == 0]
        row = {"work": work, "detector": detector, "precision": precision, "allocator": allocator, "runs": tries}
        if good:
            row["seconds"] = min(run["seconds"] for run in good)
            row["peak_rss_mib"] = max(run["peak_rss_mib"] for run in good)
            row["under_target"] = row["peak_rss_mib"] <= (PHOTO_TARGET_MIB if work.startswith("photo") else TARGET_MIB)
        table.append(row)
    print(f"\n{'work':<9} {'detector':<20} {'precision':<9} {'allocator':<12} {'seconds':>8} {'peak MiB':>9}")
    for row in table:
        print(f"{row['work']:<9} {row['detector']:<20} {row['precision']:<9} {row['allocator']:<12} "
              f"{row.get('seconds', float('nan')):>8.2f} {row.get('peak_rss_mib', float('nan')):>9.0f}")
    photo_work = {f"photo{mp}": "{}x{} JPEG, one face, -s {}".format(*photo_size(mp), PHOTO_UPSCALE)
                  for mp in args.photos}
    report = {
        "benchmark": "memory",
        "work": {"picture": f"{PICTURE_SIZE}x{PICTURE_SIZE} PNG, one face",
                 "folder": f"{FOLDER_PICTURES} such pictures",
                 "video": f"{VIDEO_SIZE}x{VIDEO_SIZE}, {VIDEO_FRAMES} frames, H.264 + AAC, one face",
                 **photo_work},
        "command": "codeformer restore -i INPUT -o OUT --precision P (defaults: -w 0.5 -s 2, retinaface_resnet50,"
                   f" parse; photos: -s {PHOTO_UPSCALE} --detection_model D)",
        "target_peak_mib": TARGET_MIB,
        "photo_target_peak_mib": PHOTO_TARGET_MIB,
        "rows": table,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    save_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
