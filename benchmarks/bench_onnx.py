"""ONNX Runtime against the tuned torch path: seconds per 512x512 face on the CPU, batch 1 and 4.

The question (from the issue): does ONNX Runtime run CodeFormer at least 15% faster than our tuned
torch path *at the same output*, which would justify a ``--backend onnxruntime`` for restoration?
"At least 15% faster" here means at most 0.85x the torch time per face.

- The network: the official ``codeformer.pth`` layout with random weights (seed 0; the arithmetic
  is the real one), exported once with :func:`codeformer.onnx_export.export_onnx` (timed; or
  ``--onnx`` reuses a file exported from that network).
- torch: :class:`codeformer.restorer.FaceRestorer` in ``fp32`` after
  :func:`codeformer.precision.configure_cpu_runtime` (what the command line runs), the same output
  as ONNX Runtime up to float rounding; and, where the CPU has native bfloat16, ``bf16`` for
  reference (faster, not the same output: about 40 dB PSNR against fp32).
- ONNX Runtime: :class:`codeformer.onnx_export.OnnxRestorer`, CPU provider, all graph optimisations,
  as many intra-op threads as torch uses.
- Same output: the restored crops of both fp32 paths are compared (largest difference in levels of
  255, share of differing values) on the timed crops.

On a shared machine other processes slow the numbers down (the load average is recorded before and
after). To keep both backends under the same conditions they run in one fresh process, alternating
run by run, rather than one process each; the medians are kept. Process CPU seconds are recorded
next to the wall-clock seconds: they depend less on what else the machine runs.

Usage, from the repository root::

    python -m benchmarks.bench_onnx [--batches 1 4] [--repeats 2] [--no-bf16] [--onnx codeformer.onnx]

Prints a table and writes ``benchmarks/results/onnx.json`` with a machine description.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, load_average, run_child, save_report  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "onnx.json"
BATCHES = (1, 4)
FIDELITY_WEIGHT = 0.5  # the reference's default -w
SEED = 0  # random weights
REQUIRED_SPEEDUP = 0.85  # ONNX Runtime must take at most this share of torch's time per face


# The same crops and random network as the torch benchmark, so the two compare like with like.
from benchmarks.bench_restore import _crops, _random_network  # noqa: E402


def _clock(function: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall-clock and process CPU seconds of one call, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _same_output(a: list, b: list) -> dict[str, Any]:
    import numpy as np

    differences = [np.abs(x.astype(int) - y.astype(int)) for x, y in zip(a, b)]
    return {
        "max_levels": int(max(d.max() for d in differences)),
        "differing_share": round(float(np.mean([np.mean(d > 0) for d in differences])), 6),
    }


def child(config: dict[str, Any]) -> dict[str, Any]:
    """Both backends in this (fresh) process, alternating: seconds per face for each batch size."""
    import torch

    from benchmarks.machine import peak_rss_mib
    from codeformer.onnx_export import OnnxRestorer
    from codeformer.precision import configure_cpu_runtime
    from codeformer.restorer import FaceRestorer

    applied = configure_cpu_runtime()
    threads = torch.get_num_threads()
    started = time.perf_counter()
    onnx = OnnxRestorer(config["onnx"], threads=threads)
    session_s = time.perf_counter() - started
    restorers: dict[str, Any] = {"torch fp32": FaceRestorer(_random_network(), "cpu", precision="fp32")}
    if config["bf16"]:
        restorers["torch bf16"] = FaceRestorer(_random_network(), "cpu", precision="bf16")
    restorers["onnxruntime fp32"] = onnx

    def restore(name: str, crops: list) -> list:
        return restorers[name].restore_crops(crops, fidelity_weight=FIDELITY_WEIGHT, batch_size=len(crops))

    result: dict[str, Any] = {
        "runtime_settings": applied, "threads": threads, "onnx_session_s": round(session_s, 2),
        "onnx": onnx.describe(), "first_call_s": {}, "backends": {name: {} for name in restorers},
    }
    outputs: dict[str, list] = {}
    first = _crops(1)
    for name in restorers:  # oneDNN / ONNX Runtime set-up
        result["first_call_s"][name] = round(_clock(functools.partial(restore, name, first))[0], 2)
    for batch in config["batches"]:
        crops = _crops(batch)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in restorers}
        for _ in range(config["repeats"]):
            for name in restorers:  # alternating: the same load for every backend
                wall, cpu, outputs[name] = _clock(functools.partial(restore, name, crops))
                runs[name].append((wall, cpu))
        for name, timings in runs.items():
            per_face = statistics.median(wall for wall, _ in timings) / batch
            result["backends"][name][str(batch)] = {
                "seconds_per_face": round(per_face, 3),
                "cpu_seconds_per_face": round(statistics.median(cpu for _, cpu in timings) / batch, 3),
                "runs_s": [round(wall, 3) for wall, _ in timings],
            }
        result["backends"]["onnxruntime fp32"][str(batch)]["vs_torch_fp32"] = _same_output(
            outputs["onnxruntime fp32"], outputs["torch fp32"]
        )
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result


def _export(path: Path) -> dict[str, Any]:
    """Export the random official-layout network to ``path``; how long it took and how big the file is."""
    from codeformer.onnx_export import export_onnx

    net = _random_network()
    started = time.perf_counter()
    export_onnx(net, path)
    return {"export_s": round(time.perf_counter() - started, 1), "file_mib": round(path.stat().st_size / 2**20, 1)}


def _verdict(result: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime's time per face as a share of torch fp32's, per batch size, and whether it clears the bar."""
    backends = result["backends"]
    shares = {
        batch: round(numbers["seconds_per_face"] / backends["torch fp32"][batch]["seconds_per_face"], 3)
        for batch, numbers in backends["onnxruntime fp32"].items()
    }
    cpu_shares = {
        batch: round(numbers["cpu_seconds_per_face"] / backends["torch fp32"][batch]["cpu_seconds_per_face"], 3)
        for batch, numbers in backends["onnxruntime fp32"].items()
    }
    return {
        "onnx_time_share_of_torch_fp32": shares,
        "onnx_cpu_time_share_of_torch_fp32": cpu_shares,
        "required_share": REQUIRED_SPEEDUP,
        "onnxruntime_at_least_15_percent_faster": all(share <= REQUIRED_SPEEDUP for share in shares.values()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes (default 1 4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per batch size and backend (median kept)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the torch bf16 reference runs")
    parser.add_argument("--onnx", type=Path,
                        help="an ONNX file exported from the seed-0 random network (default: export now)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    from codeformer.precision import cpu_has_native_bf16

    load_before = load_average()
    with tempfile.TemporaryDirectory() as folder:
        path = args.onnx or Path(folder) / "codeformer.onnx"
        export = {"reused": str(path)} if args.onnx else _export(path)
        if "export_s" in export:
            print(f"export: {export['export_s']:.1f} s, {export['file_mib']:.0f} MiB", flush=True)
        config = {"onnx": str(path), "batches": args.batches, "repeats": args.repeats,
                  "bf16": not args.no_bf16 and cpu_has_native_bf16()}
        started = time.perf_counter()
        result = run_child("benchmarks.bench_onnx", config)
        wall_s = round(time.perf_counter() - started, 1)
    report: dict[str, Any] = {
        "benchmark": "onnx",
        "network": "CodeFormer, random weights in the official layout (codeformer.pth), 512x512 faces",
        "fidelity_weight": FIDELITY_WEIGHT,
        "export": export,
        "config": config,
        "result": result,
        "wall_s": wall_s,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    if "error" in result:
        print(f"failed: {result['error']}")
    else:
        report["verdict"] = _verdict(result)
        _print(result, report["verdict"])
    print(f"load average before {load_before}, after {report['load_after']}")
    save_report(report, args.output)
    return report


def _print(result: dict[str, Any], verdict: dict[str, Any]) -> None:
    print(f"ONNX Runtime session: {result['onnx_session_s']:.1f} s to load ({result['onnx']}), "
          f"{result['threads']} threads for both")
    for name, batches in result["backends"].items():
        cells = [f"b{batch}: {n['seconds_per_face']:.2f} s/face ({n['cpu_seconds_per_face']:.2f} CPU s)"
                 for batch, n in batches.items()]
        print(f"{name:<18} first call {result['first_call_s'][name]:.1f} s | " + " | ".join(cells))
    for batch, numbers in result["backends"]["onnxruntime fp32"].items():
        same = numbers["vs_torch_fp32"]
        share, cpu_share = (verdict[key][batch] for key in
                            ("onnx_time_share_of_torch_fp32", "onnx_cpu_time_share_of_torch_fp32"))
        print(f"b{batch}: onnxruntime vs torch fp32 crops: at most {same['max_levels']} level(s) apart on "
              f"{same['differing_share']:.4%} of the values; time share {share:.2f} (CPU time {cpu_share:.2f})")
    answer = "yes" if verdict["onnxruntime_at_least_15_percent_faster"] else "no"
    print(f"ONNX Runtime at least 15% faster than torch fp32 (share <= {REQUIRED_SPEEDUP}) at every batch size: "
          f"{answer}")


if __name__ == "__main__":
    main()
