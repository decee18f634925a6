"""Precision modes: what ``auto`` picks, dtype plumbing, quality bounds of bf16, batching, the compile fallback.

Bounds of the fast modes (random weights in the official layout: the real ones are not available
offline) on real face crops against fp32: at least 99% of the code tokens identical and at least
30 dB PSNR. fp32 itself must equal a float64 run of the same network up to float rounding.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoint_factory import cached_codeformer_checkpoint, random_codeformer

from benchmarks.faces import real_face_crops
from codeformer import precision as precision_module
from codeformer.archs import CodeFormerConfig
from codeformer.archs.codeformer import FuseSFTBlock
from codeformer.archs.vqgan import SUBPIXEL_MIN_PIXELS, Upsample
from codeformer.errors import CodeFormerError
from codeformer.precision import apply_precision, resolve_precision
from codeformer.restorer import FaceRestorer, crops_to_batch

SMALL_SIDE = 128  # small test network: the full VQGAN, a 4x4 latent grid, a narrow Transformer
SMALL_CONFIG = CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=(SMALL_SIDE // 32) ** 2)
MIN_PSNR_DB = 30.0  # fast modes against fp32
MIN_TOKEN_AGREEMENT = 0.99  # share of code tokens identical to fp32's
# fp32 against float64: float rounding only, relative to the output's largest magnitude (random
# weights drive outputs to about +-10; a swapped code token would change them by order 1).
FP32_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-12  # two float64 formulations of the same arithmetic
W = 0.5  # the reference's default fidelity weight


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def small_faces() -> list[np.ndarray]:
    """Three real crops (aligned astronaut, its low-quality variant, the cameraman) at the small net's size."""
    named = dict(real_face_crops())
    picked = [named["astronaut"], named["astronaut_low_quality"], named["camera"]]
    return [cv2.resize(face, (SMALL_SIDE, SMALL_SIDE), interpolation=cv2.INTER_AREA) for face in picked]


def small_restorer(precision: str = "fp32", **kwargs: object) -> FaceRestorer:
    return FaceRestorer(random_codeformer(SMALL_CONFIG, seed=7), "cpu", precision=precision, **kwargs)


# ------------------------------------------------------------------ resolve_precision


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16_support(monkeypatch, native, expected):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu"), native_bf16=not native) != expected


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_uses_bf16_only_with_tensor_core_support(native, expected):
    assert resolve_precision("auto", torch.device("cuda"), native_bf16=native) == expected


def test_auto_on_mps_stays_fp32():
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    assert resolve_precision("fp16", torch.device("mps")) == "fp16"


def test_explicit_choices_are_kept_where_they_make_sense():
    assert resolve_precision(" FP32 ", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu", native_bf16=False) == "bf16"  # allowed, only slow
    assert resolve_precision("fp16", "cuda", native_bf16=False) == "fp16"
    assert resolve_precision("bf16", "cuda", native_bf16=True) == "bf16"


def test_unusable_choices_are_refused_with_advice():
    with pytest.raises(CodeFormerError, match=r"^precision fp8: unknown precision; choose one of auto, fp32, bf16, fp16$"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(CodeFormerError, match="^precision fp16: CPUs compute float16 slowly; use bf16 or fp32$"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(CodeFormerError, match="no bfloat16 support .*; use fp16 or fp32"):
        resolve_precision("bf16", "cuda", native_bf16=False)


def test_apply_precision_needs_a_resolved_mode():
    with pytest.raises(ValueError, match="resolve_precision"):
        apply_precision(random_codeformer(SMALL_CONFIG), "auto", torch.device("cpu"))


def test_restorer_reports_the_resolved_mode(monkeypatch, caplog):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr("codeformer.restorer.cpu_has_native_bf16", lambda: False)
    assert small_restorer("auto").precision == "fp32"
    with caplog.at_level(logging.WARNING, logger="codeformer.restorer"):
        restorer = small_restorer("bf16")
    assert restorer.precision == "bf16"
    assert "no native bfloat16" in caplog.text
    assert restorer.describe() == "cpu, bf16 (code prediction in fp32, generator in bf16)"
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert small_restorer("auto").precision == "bf16"


def test_from_file_checks_the_precision_before_reading(tmp_path):
    with pytest.raises(CodeFormerError, match="CPUs compute float16 slowly"):
        FaceRestorer.from_file(tmp_path / "missing.pth", device="cpu", precision="fp16")


# ------------------------------------------------------------------ dtype plumbing


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_only_the_generator_changes_dtype(precision):
    net = random_codeformer(SMALL_CONFIG, seed=3)
    apply_precision(net, precision, torch.device("cpu"))  # fp16 on CPU: plumbing only (GPUs run it)
    dtype = precision_module.DTYPES[precision]
    assert net.decoder_dtype == dtype
    for name, tensor in net.state_dict().items():
        in_decoder = name.startswith(("generator.", "fuse_convs_dict."))
        assert tensor.dtype == (dtype if in_decoder else torch.float32), name
        if in_decoder and tensor.ndim == 4:
            assert tensor.is_contiguous(memory_format=torch.channels_last), name
        elif tensor.ndim == 4:
            assert tensor.is_contiguous(), name  # the encoder keeps the accurate NCHW kernels
    x = torch.rand(1, 3, SMALL_SIDE, SMALL_SIDE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        out, logits, lq_feat = net(x, w=W, adain=True)
    assert out.dtype == logits.dtype == lq_feat.dtype == torch.float32
    assert out.is_contiguous() and torch.isfinite(out).all()


# ------------------------------------------------------------------ fp32: exact to float rounding


def test_subpixel_upsample_is_nearest_upsampling_then_conv():
    side = int(SUBPIXEL_MIN_PIXELS**0.5)
    generator = torch.Generator().manual_seed(4)
    block = Upsample(8).double()
    for shape in [(2, 8, side, side + 3), (1, 8, side // 2, side // 2)]:  # sub-pixel form, and the plain one
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        with torch.inference_mode():
            expected = block.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            for layout in (torch.contiguous_format, torch.channels_last):
                out = block.to(memory_format=layout)(x.contiguous(memory_format=layout))
                assert out.shape == expected.shape and out.is_contiguous(memory_format=layout)
                torch.testing.assert_close(out, expected, rtol=0, atol=FLOAT64_TOLERANCE)


def test_fusion_block_computes_the_reference_formula():
    block = FuseSFTBlock(32, 32).double()
    generator = torch.Generator().manual_seed(5)
    enc, dec = (torch.randn(2, 32, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    with torch.inference_mode():
        cond = block.encode_enc(torch.cat([enc, dec], dim=1))
        expected = dec + W * (dec * block.scale(cond) + block.shift(cond))
        torch.testing.assert_close(block(enc, dec, W), expected, rtol=0, atol=FLOAT64_TOLERANCE)


def test_fp32_mode_equals_a_float64_run_to_float_rounding(small_faces):
    restorer = small_restorer("fp32")
    reference = copy.deepcopy(restorer.net).double().set_decoder_precision(torch.float64)
    batch = crops_to_batch(small_faces, torch.device("cpu"))
    with torch.inference_mode():
        out64, logits64, _ = reference(batch.double(), w=W, adain=True)
        lq_feat, _ = restorer.net.encode(batch)
        logits = restorer.net.predict_logits(lq_feat)
        out = restorer._forward(batch, W, True)
    assert torch.equal(logits.argmax(dim=2), logits64.argmax(dim=2))
    scale = out64.abs().max().item()
    torch.testing.assert_close(out.double(), out64, rtol=0, atol=FP32_TOLERANCE * scale)


# ------------------------------------------------------------------ bf16 bounds, batching


def test_bf16_meets_the_bounds_on_official_size_real_faces(tmp_path_factory):
    """Two full-size crops through fp32 and bf16 (a few seconds each): tokens and PSNR within bounds."""
    named = dict(real_face_crops())
    faces = [named["astronaut"], named["astronaut_low_quality"]]
    path = cached_codeformer_checkpoint(tmp_path_factory, "codeformer")
    results = {}
    for mode in ("fp32", "bf16"):
        restorer = FaceRestorer.from_file(path, device="cpu", precision=mode)
        results[mode] = (restorer.predict_codes(faces, batch_size=2), restorer.restore_crops(faces, fidelity_weight=W, batch_size=2))
    (codes32, faces32), (codes16, faces16) = results["fp32"], results["bf16"]
    assert (codes16 == codes32).mean() >= MIN_TOKEN_AGREEMENT
    assert len(np.unique(codes32)) > 10  # a meaningful test: many different codes in play
    for fast, exact in zip(faces16, faces32):
        assert MIN_PSNR_DB <= psnr(fast, exact) < float("inf")  # close, and really computed in bf16


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_equals_singles_in_each_mode(small_faces, precision):
    restorer = small_restorer(precision)
    batched = restorer.restore_crops(small_faces, fidelity_weight=W, batch_size=len(small_faces))
    singles = restorer.restore_crops(small_faces, fidelity_weight=W, batch_size=1)
    codes = [restorer.predict_codes(small_faces, batch_size=size) for size in (len(small_faces), 1)]
    assert np.array_equal(*codes)
    for together, alone in zip(batched, singles):
        if precision == "fp32":  # float rounding: at most one grey level here and there
            assert np.abs(together.astype(int) - alone.astype(int)).max() <= 1
        else:  # bfloat16 rounding in a different kernel order
            assert psnr(together, alone) >= MIN_PSNR_DB


def test_bf16_small_network_stays_close_to_fp32(small_faces):
    exact = small_restorer("fp32")
    fast = small_restorer("bf16")
    assert np.array_equal(fast.predict_codes(small_faces), exact.predict_codes(small_faces))
    for a, b in zip(fast.restore_crops(small_faces, fidelity_weight=W), exact.restore_crops(small_faces, fidelity_weight=W)):
        assert MIN_PSNR_DB <= psnr(a, b) < float("inf")


# ------------------------------------------------------------------ torch.compile fallback


def test_compile_unavailable_falls_back_to_eager(monkeypatch, caplog, small_faces):
    def no_compiler(function):
        raise RuntimeError("Dynamo is not supported on this Python\nsecond line")

    expected = small_restorer("fp32").restore_crops(small_faces[:1], fidelity_weight=W)
    monkeypatch.setattr(torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="codeformer.restorer"):
        restorer = small_restorer("fp32", compile=True)
    assert not restorer.compiled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "torch.compile failed (RuntimeError: Dynamo is not supported on this Python second line); "
        "running the network uncompiled"
    ]
    np.testing.assert_array_equal(restorer.restore_crops(small_faces[:1], fidelity_weight=W)[0], expected[0])


def test_compile_failing_on_first_call_falls_back_once(monkeypatch, caplog, small_faces):
    calls = []

    def broken_compile(function):
        def compiled(*args):
            calls.append(len(args))
            raise RuntimeError("C++ compiler not found")

        return compiled

    expected = small_restorer("fp32").restore_crops(small_faces[:2], fidelity_weight=W, batch_size=1)
    monkeypatch.setattr(torch, "compile", broken_compile)
    restorer = small_restorer("fp32", compile=True)
    assert restorer.compiled  # nothing has failed yet
    with caplog.at_level(logging.WARNING, logger="codeformer.restorer"):
        restored = restorer.restore_crops(small_faces[:2], fidelity_weight=W, batch_size=1)
    assert not restorer.compiled and calls == [3]  # tried once, then eager for good
    assert sum("C++ compiler not found" in r.getMessage() for r in caplog.records) == 1
    for got, want in zip(restored, expected):
        np.testing.assert_array_equal(got, want)


def test_compile_wraps_the_generator(monkeypatch, small_faces):
    compiled = []

    def fake_compile(function):
        compiled.append(function)
        return function

    monkeypatch.setattr(torch, "compile", fake_compile)
    restorer = small_restorer("bf16", compile=True)
    assert restorer.compiled and restorer.describe().endswith(", compiled")
    assert compiled == [restorer.net.decode]
    assert len(restorer.restore_crops(small_faces[:1], fidelity_weight=W)) == 1


# ------------------------------------------------------------------ process settings (CLI opt-in)


def test_configure_cpu_runtime_reports_what_it_set():
    # In a child process: the settings are process-wide and must not leak into this test session.
    code = (
        "import json, torch; from codeformer.precision import configure_cpu_runtime as c; "
        "print(json.dumps([c(flush_denormal=False, reuse_memory=False), c(reuse_memory=False), c(), "
        "torch.tensor([1e-40]).item()]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    nothing, flush_only, everything, denormal = json.loads(result.stdout)
    assert nothing == [] and flush_only == ["flush denormals"]
    assert everything[0] == "flush denormals"
    if sys.platform.startswith("linux"):
        assert everything[1].startswith("reuse freed memory")
    assert denormal == 0.0  # flushed


_REUSE_IN_A_THREAD = """
import json, resource, sys, threading
import numpy as np
from codeformer.precision import configure_cpu_runtime
if sys.argv[1] == "tuned":
    configure_cpu_runtime(flush_denormal=False)
faults = []
def work():
    block = np.ones(2**27 // 8); del block  # 128 MiB, more than a thread's own arena can hold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        block = np.ones(2**27 // 8); del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work); thread.start(); thread.join()
print(json.dumps(faults[0]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_reused_memory_also_serves_threads_started_after_the_tuning():
    """A web handler's or video stage's thread reuses freed large blocks too, instead of faulting in fresh pages."""
    def faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", _REUSE_IN_A_THREAD, mode], capture_output=True, text=True,
                                check=True)
        return json.loads(result.stdout)

    untuned, tuned = faults("defaults"), faults("tuned")
    # Four fresh 128 MiB mappings fault in at least 4 x 64 pages (2 MiB transparent huge pages, which numpy
    # asks for; 4 KiB pages: 4 x 32768); reused blocks fault in none.
    assert untuned >= 4 * 64
    assert tuned < 16, (untuned, tuned)
