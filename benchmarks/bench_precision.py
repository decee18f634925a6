"""Quality of the fast precision modes against fp32: code-token agreement and PSNR on real face crops.

Bounds (from the issue): at least 99% of the code tokens identical to fp32's and at least 30 dB PSNR
of the restored 512x512 crops against fp32's. Measured on the 12 crops of :mod:`benchmarks.faces`
(the astronaut aligned on dlib's landmarks, mirrored / shifted / rescaled / rotated / low-quality /
noisy variants, the cameraman, a cat) with random weights in the official layout, unless
``--checkpoint`` names a real ``codeformer.pth``.

Also, with ``--ablations``, the designs that were rejected, to show why the tokens are decided in
float32 NCHW: the encoder in bfloat16, and the encoder with channels-last float32 convolutions.
With ``--float64``, fp32 itself against a float64 run (float rounding only).

Usage, from the repository root::

    python -m benchmarks.bench_precision [--faces 12] [--ablations] [--float64] [--checkpoint PATH]

Prints a table and writes ``benchmarks/results/precision.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.faces import real_face_crops  # noqa: E402
from benchmarks.machine import describe_machine, load_average, save_report  # noqa: E402
from codeformer.archs import CodeFormer  # noqa: E402
from codeformer.precision import apply_precision, cpu_has_native_bf16, cuda_has_native_bf16  # noqa: E402
from codeformer.restorer import batch_to_crops, crops_to_batch  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "precision.json"
MIN_PSNR_DB = 30.0
MIN_TOKEN_AGREEMENT = 0.99
FIDELITY_WEIGHT = 0.5
BATCH = 4  # faces per forward

# A forward for the comparison: (network, (N, 3, 512, 512) float32 batch) -> (images, tokens (N, L)).
Forward = Callable[[CodeFormer, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _decibels(value: float) -> float | str:
    """JSON-friendly PSNR: rounded, or "inf" for identical pictures."""
    return "inf" if value == float("inf") else round(value, 2)


def library_forward(net: CodeFormer, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, logits, _ = net(batch, w=FIDELITY_WEIGHT, adain=True)
    return out, logits.argmax(dim=2)


def encoder_as(dtype: torch.dtype, layout: torch.memory_format) -> Forward:
    """A forward whose encoder (already converted by the caller) runs in ``dtype`` and ``layout``."""

    def forward(net: CodeFormer, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lq_feat, features = net.encode(batch.to(dtype=dtype, memory_format=layout))
        lq_feat = lq_feat.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        logits = net.predict_logits(lq_feat)
        out = net.decode(net.code_features(logits, lq_feat, adain=True), features, FIDELITY_WEIGHT)
        return out, logits.argmax(dim=2)

    return forward


def run(net: CodeFormer, crops: list[np.ndarray], forward: Forward, device: torch.device) -> dict[str, Any]:
    images, tokens = [], []
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(crops), BATCH):
            batch = crops_to_batch(crops[start : start + BATCH], device)
            out, codes = forward(net, batch)
            images += batch_to_crops(out)
            tokens.append(codes.cpu())
    return {"images": images, "tokens": torch.cat(tokens), "seconds": time.perf_counter() - started}


def compare(candidate: dict[str, Any], reference: dict[str, Any], names: list[str]) -> dict[str, Any]:
    agreement = (candidate["tokens"] == reference["tokens"]).float().mean(dim=1).tolist()  # per face
    psnrs = [psnr(a, b) for a, b in zip(candidate["images"], reference["images"])]
    summary = {
        "token_agreement": round(float(np.mean(agreement)), 5),
        "min_face_token_agreement": round(min(agreement), 5),
        "min_psnr_db": _decibels(min(psnrs)),
        "median_psnr_db": _decibels(float(np.median(psnrs))),
        "max_abs_diff": int(max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in
                                zip(candidate["images"], reference["images"]))),
        "seconds": round(candidate["seconds"], 2),
        "per_face": {name: {"token_agreement": round(t, 5), "psnr_db": _decibels(p)}
                     for name, t, p in zip(names, agreement, psnrs)},
    }
    summary["within_bounds"] = bool(
        summary["token_agreement"] >= MIN_TOKEN_AGREEMENT and min(psnrs) >= MIN_PSNR_DB
    )
    return summary


def load_network(checkpoint: Path | None, device: torch.device) -> tuple[CodeFormer, str]:
    if checkpoint is not None:
        from codeformer.archs import build_codeformer
        from codeformer.weights import load_state_dict

        return build_codeformer(load_state_dict(checkpoint), source=str(checkpoint)).to(device), str(checkpoint)
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import random_codeformer

    from codeformer.archs import CodeFormerConfig

    return random_codeformer(CodeFormerConfig(), seed=0).to(device), "random weights, official layout (seed 0)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=12, help="how many of the 12 real crops (default all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", type=Path, help="a real codeformer.pth (default: random weights)")
    parser.add_argument("--ablations", action="store_true", help="also the rejected designs (encoder in bf16 / NHWC)")
    parser.add_argument("--float64", action="store_true", help="also fp32 against a float64 run (slow on CPU)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    from codeformer.device import resolve_device

    device = resolve_device(args.device)
    named = real_face_crops(count=args.faces)
    names, crops = [n for n, _ in named], [c for _, c in named]
    base, weights = load_network(args.checkpoint, device)
    load_before = load_average()

    exact = copy.deepcopy(base)
    apply_precision(exact, "fp32", device)
    reference = run(exact, crops, library_forward, device)
    del exact
    candidates: dict[str, tuple[CodeFormer, Forward]] = {}
    native_bf16 = cuda_has_native_bf16(device) if device.type == "cuda" else cpu_has_native_bf16()
    modes = ["bf16"] + (["fp16"] if device.type in ("cuda", "mps") else [])
    for mode in modes:
        net = copy.deepcopy(base)
        apply_precision(net, mode, device)
        candidates[mode] = (net, library_forward)
    if args.ablations:
        net = copy.deepcopy(base)
        apply_precision(net, "bf16", device)
        net.encoder.to(torch.bfloat16)
        candidates["ablation: encoder also bf16"] = (net, encoder_as(torch.bfloat16, torch.contiguous_format))
        net = copy.deepcopy(base)
        apply_precision(net, "fp32", device)
        net.encoder.to(memory_format=torch.channels_last)
        candidates["ablation: fp32 encoder channels-last"] = (net, encoder_as(torch.float32, torch.channels_last))
    if args.float64:
        net = copy.deepcopy(base).double().set_decoder_precision(torch.float64)
        candidates["float64 (fp32 vs exact)"] = (net, lambda n, b: library_forward(n, b.double()))

    results = {}
    for label, (net, forward) in candidates.items():
        results[label] = compare(run(net, crops, forward, device), reference, names)
        del net
        r = results[label]
        print(f"{label:<40} tokens {r['token_agreement']:.4f} (worst face {r['min_face_token_agreement']:.4f})  "
              f"PSNR min {r['min_psnr_db']} dB, median {r['median_psnr_db']} dB  "
              f"{'within' if r['within_bounds'] else 'OUTSIDE'} bounds", flush=True)
    candidates.clear()
    report = {
        "benchmark": "precision",
        "weights": weights,
        "bounds": {"min_token_agreement": MIN_TOKEN_AGREEMENT, "min_psnr_db": MIN_PSNR_DB},
        "faces": names,
        "device": str(device),
        "native_bf16": native_bf16,
        "fp32_seconds": round(reference["seconds"], 2),
        "unique_fp32_tokens": int(reference["tokens"].unique().numel()),
        "results": results,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    save_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
