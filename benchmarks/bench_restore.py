"""Face restoration speed: seconds per 512x512 face for each precision and batch size, compile on/off.

Random CodeFormer weights in the official layout (the real ones are not downloaded; the arithmetic
is the same), real face crops (:mod:`benchmarks.faces`). Each configuration runs in a fresh process:

- ``straightforward``: the reference-style forward (:mod:`benchmarks.straightforward`), float32,
  batch 1: the baseline the speed-ups are relative to (``vs_straightforward``: against it as it
  runs by default; ``vs_straightforward_same_settings``: against it with the same process settings);
- each precision the device offers (CPU: fp32, and bf16 with native bfloat16 instructions; CUDA:
  fp32, fp16, bf16) at each batch size, with the library's defaults and, on CPU, also after
  :func:`codeformer.precision.configure_cpu_runtime` (the process settings the command line applies);
- ``torch.compile`` of the generator for the fastest precision: compile time and steady state.

On CUDA the numbers are faces per second at batch 1/8/16 (the defaults there). The load average
is recorded before and after: other processes on the machine slow the numbers down.

Usage, from the repository root::

    python -m benchmarks.bench_restore [--batches 1 4 8] [--repeats 3] [--precisions fp32 bf16]
                                       [--no-compile] [--output benchmarks/results/restore.json]

Prints a table and writes the JSON with a machine description.
"""

from __future__ import annotations

import argparse
import json
import os
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

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "restore.json"
CPU_BATCHES = (1, 4, 8)
CUDA_BATCHES = (1, 8, 16)
FIDELITY_WEIGHT = 0.5  # the reference's default -w
SEED = 0  # random weights


def _crops(count: int) -> list:
    from benchmarks.faces import real_face_crops

    faces = [crop for _, crop in real_face_crops()]
    return [faces[i % len(faces)] for i in range(count)]


def _random_network():
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import random_codeformer

    from codeformer.archs import CodeFormerConfig

    return random_codeformer(CodeFormerConfig(), seed=SEED)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function, device) -> float:
    _sync(device)
    started = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - started


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process: seconds per face for each batch size."""
    import torch

    from benchmarks.machine import peak_rss_mib
    from codeformer.device import resolve_device
    from codeformer.precision import configure_cpu_runtime
    from codeformer.restorer import FaceRestorer, batch_to_crops, crops_to_batch

    applied = configure_cpu_runtime() if config["tuned"] else []
    device = resolve_device(config["device"])
    net = _random_network()
    if config["variant"] == "straightforward":
        from benchmarks.straightforward import straightforward_forward

        net = net.to(device)

        def restore(crops: list) -> list:
            with torch.inference_mode():
                return batch_to_crops(straightforward_forward(net, crops_to_batch(crops, device), FIDELITY_WEIGHT))
    else:
        restorer = FaceRestorer(net, device, precision=config["precision"], compile=config["compile"])

        def restore(crops: list) -> list:
            return restorer.restore_crops(crops, fidelity_weight=FIDELITY_WEIGHT, batch_size=len(crops))

    result: dict[str, Any] = {"runtime_settings": applied, "batches": {}}
    first = _timed(lambda: restore(_crops(1)), device)  # oneDNN/cuDNN set-up, compilation
    result["first_call_s"] = round(first, 2)
    for batch in config["batches"]:
        crops = _crops(batch)
        times = [_timed(lambda: restore(crops), device) for _ in range(config["repeats"])]
        per_face = statistics.median(times) / batch
        result["batches"][str(batch)] = {
            "seconds_per_face": round(per_face, 3),
            "faces_per_second": round(1 / per_face, 2),
            "runs_s": [round(t, 3) for t in times],
        }
    if config["variant"] != "straightforward":
        result["compiled_after_run"] = restorer.compiled
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    if device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def _run_child(config: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache:
        # An empty inductor cache: the first call then measures a cold compilation.
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        return run_child("benchmarks.bench_restore", config, env)


def available_precisions(device_name: str) -> list[str]:
    """The precisions worth measuring on a device: fp32, plus the half types it runs natively."""
    import torch

    from codeformer.device import resolve_device
    from codeformer.precision import cpu_has_native_bf16, cuda_has_native_bf16

    device = resolve_device(device_name)
    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if cuda_has_native_bf16(device) else [])
    if device.type == "cpu":
        return ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    return ["fp32", "fp16"] if torch.backends.mps.is_available() else ["fp32"]


def _label(run: dict[str, Any]) -> str:
    config = run["config"]
    if config["variant"] == "straightforward":
        return "straightforward fp32" + (" tuned" if config["tuned"] else "")
    tags = [config["precision"]] + (["compiled"] if config["compile"] else []) + (["tuned"] if config["tuned"] else [])
    return " ".join(tags)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: CPU 1 4 8, CUDA 1 8 16)")
    parser.add_argument("--precisions", nargs="+", help="default: every precision the device runs natively")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (median kept)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--no-untuned", action="store_true",
                        help="CPU: measure only with configure_cpu_runtime() (skip the library-default runs)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    from codeformer.device import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batches = args.batches or list(CUDA_BATCHES if cuda else CPU_BATCHES)
    precisions = args.precisions or available_precisions(args.device)
    tunings = [True] if cuda or args.no_untuned else [False, True]  # the runtime settings are CPU-only
    base = {"device": str(device), "repeats": args.repeats, "compile": False}
    # The baseline as it is (library defaults) and, on CPU, with the same process settings as the tuned runs.
    configs = [dict(base, variant="straightforward", precision="fp32", batches=[1], tuned=t)
               for t in ([True] if cuda else [False, True])]
    configs += [dict(base, variant="restorer", precision=p, batches=batches, tuned=t)
                for t in tunings for p in precisions]
    if not args.no_compile:
        best = precisions[-1]  # bf16 where the device has it, else the last listed
        configs.append(dict(base, variant="restorer", precision=best, batches=[1], tuned=True, compile=True))

    load_before = load_average()
    runs = []
    for config in configs:
        started = time.perf_counter()
        result = _run_child(config)
        runs.append({"config": config, "result": result, "wall_s": round(time.perf_counter() - started, 1)})
        _print_run(runs[-1])
    baselines = {run["config"]["tuned"]: run["result"].get("batches", {}).get("1", {}).get("seconds_per_face")
                 for run in runs if run["config"]["variant"] == "straightforward"}
    for run in runs:
        if run["config"]["variant"] == "straightforward":
            continue
        plain, same = baselines.get(False), baselines.get(run["config"]["tuned"])
        for numbers in run["result"].get("batches", {}).values():
            if plain:  # against the straightforward implementation as it runs by default
                numbers["vs_straightforward"] = round(numbers["seconds_per_face"] / plain, 3)
            if same:  # against it with the same process settings
                numbers["vs_straightforward_same_settings"] = round(numbers["seconds_per_face"] / same, 3)
    report = {
        "benchmark": "restore",
        "network": "CodeFormer, random weights in the official layout (codeformer.pth), 512x512 faces",
        "fidelity_weight": FIDELITY_WEIGHT,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "runs": runs,
    }
    print(f"load average before {load_before}, after {report['load_after']}")
    save_report(report, args.output)
    return report


def _print_run(run: dict[str, Any]) -> None:
    result = run["result"]
    if "error" in result:
        print(f"{_label(run):<28} failed: {result['error']}")
        return
    cells = [f"b{batch}: {n['seconds_per_face']:.2f} s/face ({n['faces_per_second']:.2f} faces/s)"
             for batch, n in result["batches"].items()]
    print(f"{_label(run):<28} first call {result['first_call_s']:.1f} s | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
