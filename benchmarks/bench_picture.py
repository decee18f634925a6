"""Whole-picture restoration time, stage by stage: detect, align, restore, parse, paste.

A 2000x1500 group photo with five scaled / mirrored astronauts (:func:`benchmarks.faces.group_photo`),
detection at the cost of the default RetinaFace ResNet-50 (with the faces dlib finds, see
:class:`benchmarks.faces.TimedRetinaFace`; ``--detector dlib`` times dlib's own CNN detector instead),
random CodeFormer and ParseNet weights in the official layouts, ``-w 0.5 -s 2``, the stages of
:func:`codeformer.restoration.restore_whole_pictures` timed one by one:

- detect: :func:`codeformer.face.detection.find_faces` (with ``--detector dlib``, dlib sees the
  picture at its own size with one pyramid upsampling, as in the reference: by far the slowest stage
  on a CPU);
- align: similarity fit + warp of each face to 512x512;
- restore: :meth:`FaceRestorer.restore` of all faces (batch 4), per precision;
- parse: ParseNet masks of the restored faces;
- paste: the picture resized 2x and the faces blended in.

Detection and alignment do not depend on the precision: they run once, in this process. The other
stages run in a fresh process per configuration (precision; library defaults or with
:func:`codeformer.precision.configure_cpu_runtime`, as the command line runs).

Usage, from the repository root::

    python -m benchmarks.bench_picture [--precisions fp32 bf16] [--untuned] [--end-to-end]

Prints a table and writes ``benchmarks/results/picture.json``.
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

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "picture.json"
UPSCALE = 2  # the reference's default -s
FIDELITY_WEIGHT = 0.5  # the reference's default -w
BATCH_SIZE = 4  # faces per network forward (the command's default)


def random_weights_root(folder: Path) -> Path:
    """A weights root holding a random ParseNet in the official ``facelib/parsing_parsenet.pth`` layout."""
    import torch

    from codeformer.face.parsing import build_parsenet
    from codeformer.registry import model_spec

    path = folder / model_spec("parsenet", "parser").weights[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_parsenet().state_dict(), path)
    return folder


def make_detector(name: str):
    """``retinaface``: the default detector's cost with dlib's faces; ``dlib``: dlib's CNN detector."""
    from benchmarks.faces import TimedRetinaFace
    from codeformer.registry import load_detector

    # Full-size lookup: the group photo's smallest face is too small for dlib at half size.
    return TimedRetinaFace(lookup_scale=1.0) if name == "retinaface" else load_detector("dlib", device="cpu")


def detect_and_align(picture: np.ndarray, detector_name: str = "retinaface") -> dict[str, Any]:
    """Run the first two stages on ``picture``; their times, the affines and the crops."""
    from codeformer.face.alignment import TEMPLATES, estimate_alignment, warp_face
    from codeformer.face.detection import find_faces
    from codeformer.restoration import EYE_DIST_THRESHOLD

    detector = make_detector(detector_name)
    if detector_name == "retinaface":
        find_faces(picture, detector)  # dlib's faces looked up once, outside the timing
    started = time.perf_counter()
    faces = find_faces(picture, detector, eye_dist_threshold=EYE_DIST_THRESHOLD)
    detect_s = time.perf_counter() - started
    started = time.perf_counter()
    template = TEMPLATES[detector.template_name]
    affines = [affine for affine in (estimate_alignment(face.landmarks, template) for face in faces)
               if affine is not None]
    crops = [warp_face(picture, affine) for affine in affines]
    align_s = time.perf_counter() - started
    return {"detect_s": detect_s, "align_s": align_s, "affines": np.stack(affines), "crops": np.stack(crops)}


def child(config: dict[str, Any]) -> dict[str, Any]:
    """restore + parse + paste of the saved crops, in this fresh process."""
    import cv2

    from benchmarks.faces import group_photo

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import random_codeformer

    from codeformer.archs import CodeFormerConfig
    from codeformer.registry import load_parser
    from codeformer.face.pasteback import PastedFace, paste_faces
    from codeformer.precision import configure_cpu_runtime
    from codeformer.restorer import FaceRestorer

    applied = configure_cpu_runtime() if config["tuned"] else []
    saved = np.load(config["faces"])
    crops, affines = list(saved["crops"]), list(saved["affines"])
    picture = group_photo()
    restorer = FaceRestorer(random_codeformer(CodeFormerConfig(), seed=0), "cpu", precision=config["precision"])
    parser = load_parser(device="cpu", weights_dir=config["weights_root"])
    # Warm-up on one face (oneDNN primitives), as a long-running process would be.
    parser.masks(restorer.restore_crops(crops[:1], fidelity_weight=FIDELITY_WEIGHT))

    started = time.perf_counter()
    restored = restorer.restore_crops(crops, fidelity_weight=FIDELITY_WEIGHT, batch_size=BATCH_SIZE)
    restore_s = time.perf_counter() - started
    started = time.perf_counter()
    masks = parser.masks(restored, batch_size=BATCH_SIZE)
    parse_s = time.perf_counter() - started
    started = time.perf_counter()
    height, width = picture.shape[:2]
    canvas = cv2.resize(picture, (width * UPSCALE, height * UPSCALE), interpolation=cv2.INTER_LINEAR)
    pasted = [PastedFace(face, affine, parse_mask=mask) for face, affine, mask in zip(restored, affines, masks)]
    final = paste_faces(canvas, pasted, upscale=UPSCALE)
    paste_s = time.perf_counter() - started
    result = {
        "runtime_settings": applied, "precision": restorer.precision, "output_shape": list(final.shape),
        "restore_s": round(restore_s, 2), "parse_s": round(parse_s, 2), "paste_s": round(paste_s, 3),
    }
    if config["end_to_end"]:
        from codeformer.options import RestoreOptions
        from codeformer.restoration import Models, restore_whole_pictures
        from codeformer.imageio import Picture

        models = Models(restorer, make_detector(config["detector"]), parser, batch_size=BATCH_SIZE)
        options = RestoreOptions(fidelity_weight=FIDELITY_WEIGHT, upscale=UPSCALE)
        started = time.perf_counter()
        whole = restore_whole_pictures([Picture(picture, None, 3)], models, options)[0]
        result["end_to_end_s"] = round(time.perf_counter() - started, 2)
        result["end_to_end_faces"] = len(whole.faces)
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", nargs="+", help="default: fp32, and bf16 where the CPU has it natively")
    parser.add_argument("--untuned", action="store_true",
                        help="also measure with the library's defaults (without configure_cpu_runtime)")
    parser.add_argument("--end-to-end", action="store_true", help="also time restore_whole_pictures as a whole")
    parser.add_argument("--detector", choices=("retinaface", "dlib"), default="retinaface",
                        help="detection cost measured: the default RetinaFace (with dlib's faces), or dlib's CNN")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    from benchmarks.faces import GROUP_FACES, group_photo
    from codeformer.precision import cpu_has_native_bf16

    precisions = args.precisions or ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    load_before = load_average()
    picture = group_photo()
    first = detect_and_align(picture, args.detector)
    print(f"detect {first['detect_s']:.1f} s, align {first['align_s']:.3f} s: {len(first['crops'])} of "
          f"{len(GROUP_FACES)} faces", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        faces_file = Path(folder) / "faces.npz"
        np.savez(faces_file, crops=first["crops"], affines=first["affines"])
        weights_root = random_weights_root(Path(folder) / "weights")
        tunings = [False, True] if args.untuned else [True]
        for tuned in tunings:
            for precision in precisions:
                config = {"precision": precision, "tuned": tuned, "faces": str(faces_file),
                          "weights_root": str(weights_root), "end_to_end": args.end_to_end,
                          "detector": args.detector}
                result = run_child("benchmarks.bench_picture", config)
                if "error" not in result:
                    result["total_s"] = round(first["detect_s"] + first["align_s"] + result["restore_s"]
                                              + result["parse_s"] + result["paste_s"], 2)
                runs.append({"precision": precision, "tuned": tuned, **result})
                _print_run(runs[-1], first)
    report = {
        "benchmark": "picture",
        "picture": {"width": picture.shape[1], "height": picture.shape[0], "faces_placed": len(GROUP_FACES),
                    "faces_found": len(first["crops"]), "upscale": UPSCALE, "detector": args.detector},
        "weights": "random CodeFormer and ParseNet in the official layouts",
        "detect_s": round(first["detect_s"], 2),
        "align_s": round(first["align_s"], 3),
        "runs": runs,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    save_report(report, args.output)
    return report


def _print_run(run: dict[str, Any], first: dict[str, Any]) -> None:
    label = f"{run['precision']}{' tuned' if run['tuned'] else ''}"
    if "error" in run:
        print(f"{label:<12} failed: {run['error']}")
        return
    extra = f", end to end {run['end_to_end_s']:.1f} s" if "end_to_end_s" in run else ""
    print(f"{label:<12} detect {first['detect_s']:.1f} + align {first['align_s']:.2f} + restore {run['restore_s']:.1f}"
          f" + parse {run['parse_s']:.1f} + paste {run['paste_s']:.2f} = {run['total_s']:.1f} s{extra}", flush=True)


if __name__ == "__main__":
    main()
