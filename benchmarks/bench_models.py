"""Per-face CPU time of every face restoration model, in fp32 and in ``auto`` precision.

Each model runs as ``load_pipeline`` builds it, from a random checkpoint in its official layout
(the arithmetic, and so the time, does not depend on the weight values), on real face crops
(:mod:`benchmarks.faces`) resized to the model's input size, one face per forward (the CPU
default), after the command line's runtime tuning. Each (model, precision) runs in a fresh process.

Usage, from the repository root::

    python -m benchmarks.bench_models [--models codeformer gpen_bfr_512 ...] [--repeats 3]
                                      [--output benchmarks/results/models.json]

Prints a table and writes the JSON with a machine description.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, load_average, run_child, save_report  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "models.json"
MODELS = ("codeformer", "gfpgan_v1.4", "gpen_bfr_256", "gpen_bfr_512", "gpen_bfr_1024", "gpen_bfr_2048",
          "restoreformer_plus_plus")
PRECISIONS = ("fp32", "auto")


def _write_random_checkpoint(model: str, root: Path) -> None:
    """A random file in ``model``'s official layout, where the registry looks for it."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from codeformer.registry import model_spec

    path = root / model_spec(model, "restorer").weights[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    if model == "codeformer":
        from checkpoint_factory import write_codeformer_checkpoint

        write_codeformer_checkpoint(path, "codeformer")
    elif model.startswith("gfpgan"):
        from spandrel.architectures.GFPGAN import GFPGAN
        from test_spandrel_restorer import GFPGAN_V14

        torch.manual_seed(0)
        torch.save({"params_ema": GFPGAN(**GFPGAN_V14).state_dict()}, path)
    elif model.startswith("gpen_bfr"):
        from codeformer.archs.gpen import GPEN_BFR_CONFIGS
        from test_face_archs import random_gpen_state

        torch.save(random_gpen_state(GPEN_BFR_CONFIGS[f"GPEN-BFR-{model.rsplit('_', 1)[1]}"]), path)
    else:
        from codeformer.archs import RestoreFormerPPConfig
        from codeformer.archs.restoreformer_pp import MODEL_PREFIX
        from test_face_archs import random_restoreformer_state

        state = random_restoreformer_state(RestoreFormerPPConfig())
        torch.save({"state_dict": {MODEL_PREFIX + name: value for name, value in state.items()}}, path)


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One model in one precision in this fresh process: seconds per face over ``repeats`` faces."""
    import cv2

    from benchmarks.faces import real_face_crops
    from codeformer import load_pipeline
    from codeformer.precision import configure_cpu_runtime

    configure_cpu_runtime()
    with tempfile.TemporaryDirectory() as folder:
        _write_random_checkpoint(config["model"], Path(folder))
        pipe = load_pipeline(config["model"], detector=None, device="cpu", precision=config["precision"],
                             weights_dir=folder)
        size = pipe.restorer.input_size
        crops = [cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR) for _, crop in real_face_crops()]
        pipe.restorer.restore_crops(crops[:1], batch_size=1)  # first-call set-up (oneDNN) is not part of the rate
        times = []
        for index in range(config["repeats"]):
            started = time.perf_counter()
            pipe.restorer.restore_crops([crops[index % len(crops)]], batch_size=1)
            times.append(time.perf_counter() - started)
    return {"model": config["model"], "precision": config["precision"], "resolved": pipe.restorer.precision,
            "size": size, "seconds_per_face": statistics.median(times), "all": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    report: dict[str, Any] = {"machine": describe_machine(), "load_before": load_average(), "runs": []}
    print(f"{'model':26} {'precision':10} {'size':>5} {'s/face':>8}")
    for model in args.models:
        for precision in args.precisions:
            result = run_child("benchmarks.bench_models", {"model": model, "precision": precision,
                                                           "repeats": args.repeats})
            report["runs"].append(result)
            if "error" in result:
                print(f"{model:26} {precision:10} error: {result['error']}")
                continue
            print(f"{model:26} {precision + ' (' + result['resolved'] + ')':10} {result['size']:5d} "
                  f"{result['seconds_per_face']:8.2f}")
    report["load_after"] = load_average()
    save_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
