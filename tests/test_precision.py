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
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoint_factory import TINY_CONFIG, cached_codeformer_checkpoint, random_codeformer

from benchmarks.faces import real_face_crops
from codeformer import precision as precision_module
from codeformer.archs import CodeFormer, CodeFormerConfig
from codeformer.archs.codeformer import FuseSFTBlock
from codeformer.archs.vqgan import SUBPIXEL_MIN_PIXELS, Upsample
from codeformer.errors import CodeFormerError
from codeformer.precision import apply_precision, resolve_precision
from codeformer.restorer import FaceRestorer, crops_to_batch

SMALL_SIDE = 128  # small test network: the full VQGAN, a 4x4 latent grid, a narrow Transformer
SMALL_CONFIG = CodeFormerConfig(dim_embd=64, n_head=8, n_layers=2, latent_size=(SMALL_SIDE // 32) ** 2,
                                base_channels=32)
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
    """Two real crops (the astronaut's low-quality variant, the cameraman) at the small net's size: a batch of
    two is what batching can change, and bf16 runs slowly on CPUs without it (AVX2 only)."""
    named = dict(real_face_crops())
    picked = [named["astronaut_low_quality"], named["camera"]]
    return [cv2.resize(face, (SMALL_SIDE, SMALL_SIDE), interpolation=cv2.INTER_AREA) for face in picked]


@pytest.fixture(scope="module")
def small_net() -> CodeFormer:
    """The small network every small restorer here starts from; it is never converted itself (see small_restorer)."""
    return random_codeformer(SMALL_CONFIG, seed=7)


def small_restorer(net: CodeFormer, precision: str = "fp32", **kwargs: object) -> FaceRestorer:
    """A restorer on its own copy of ``net``: a restorer converts its network in place (dtype, layout)."""
    return FaceRestorer(copy.deepcopy(net), "cpu", precision=precision, **kwargs)


@dataclass(frozen=True)
class SmallRun:
    """What one small restorer gives for ``small_faces``: all faces in one batch, and one face per batch."""

    codes_together: np.ndarray
    codes_alone: np.ndarray
    together: list[np.ndarray]
    alone: list[np.ndarray]


@pytest.fixture(scope="module")
def small_runs(small_net: CodeFormer, small_faces: list[np.ndarray]) -> dict[str, SmallRun]:
    """Each mode's outputs, computed once and compared by the batching, bf16 and compile tests below."""
    runs = {}
    for mode in ("fp32", "bf16"):
        restorer = small_restorer(small_net, mode)
        runs[mode] = SmallRun(
            codes_together=restorer.predict_codes(small_faces, batch_size=len(small_faces)),
            codes_alone=restorer.predict_codes(small_faces, batch_size=1),
            together=restorer.restore_crops(small_faces, fidelity_weight=W, batch_size=len(small_faces)),
            alone=restorer.restore_crops(small_faces, fidelity_weight=W, batch_size=1),
        )
    return runs


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


def test_apply_precision_needs_a_resolved_mode(small_net):
    with pytest.raises(ValueError, match="resolve_precision"):
        apply_precision(copy.deepcopy(small_net), "auto", torch.device("cpu"))


def test_restorer_reports_the_resolved_mode(monkeypatch, caplog, small_net):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr("codeformer.restorer.cpu_has_native_bf16", lambda: False)
    assert small_restorer(small_net, "auto").precision == "fp32"
    with caplog.at_level(logging.WARNING, logger="codeformer.restorer"):
        restorer = small_restorer(small_net, "bf16")
    assert restorer.precision == "bf16"
    assert "no native bfloat16" in caplog.text
    assert restorer.describe() == "cpu, bf16 (code prediction in fp32, generator in bf16)"
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert small_restorer(small_net, "auto").precision == "bf16"


def test_from_file_checks_the_precision_before_reading(tmp_path):
    with pytest.raises(CodeFormerError, match="CPUs compute float16 slowly"):
        FaceRestorer.from_file(tmp_path / "missing.pth", device="cpu", precision="fp16")


# ------------------------------------------------------------------ dtype plumbing


def test_an_unresolved_precision_is_refused_before_anything_changes():
    net = random_codeformer(TINY_CONFIG, seed=7)
    with pytest.raises(ValueError, match="'auto' is not resolved; pass it through resolve_precision first"):
        apply_precision(net, "auto", torch.device("cpu"))
    assert net.decoder_dtype == torch.float32


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_only_the_generator_changes_dtype(precision):
    net = random_codeformer(TINY_CONFIG, seed=7)  # 64 px crops: the dtypes do not depend on the size
    apply_precision(net, precision, torch.device("cpu"))  # fp16 on CPU: plumbing only (GPUs run it)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert precision_module.torch_dtype(precision) == dtype and net.decoder_dtype == dtype
    for name, tensor in net.state_dict().items():
        in_decoder = name.startswith(("generator.", "fuse_convs_dict."))
        assert tensor.dtype == (dtype if in_decoder else torch.float32), name
        if in_decoder and tensor.ndim == 4:
            assert tensor.is_contiguous(memory_format=torch.channels_last), name
        elif tensor.ndim == 4:
            assert tensor.is_contiguous(), name  # the encoder keeps the accurate NCHW kernels
    x = torch.rand(1, 3, net.image_size, net.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
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


def test_fp32_mode_equals_a_float64_run_to_float_rounding(small_net, small_faces):
    restorer = small_restorer(small_net, "fp32")
    reference = copy.deepcopy(restorer.net).double().set_decoder_precision(torch.float64)
    # One face: float64 runs without the fast kernels, and batching is the batch test's subject.
    batch = crops_to_batch(small_faces[:1], torch.device("cpu"))
    with torch.inference_mode():
        out64, logits64, _ = reference(batch.double(), w=W, adain=True)
        lq_feat, _ = restorer.net.encode(batch)
        logits = restorer.net.predict_logits(lq_feat)
        out = restorer._forward(batch, W, True)
    assert torch.equal(logits.argmax(dim=2), logits64.argmax(dim=2))
    scale = out64.abs().max().item()
    torch.testing.assert_close(out.double(), out64, rtol=0, atol=FP32_TOLERANCE * scale)


# ------------------------------------------------------------------ bf16 bounds, batching


def restore_with_codes(restorer: FaceRestorer, faces: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The restored faces and the code tokens (N, latent_size) predicted on the way there.

    The tokens are recorded as the restoring pass predicts them: one encoder pass for both, and
    they are the tokens the generator really decoded.
    """
    tokens = []
    predict_logits = restorer.net.predict_logits

    def recording(lq_feat: torch.Tensor) -> torch.Tensor:
        logits = predict_logits(lq_feat)
        tokens.append(logits.argmax(dim=2))
        return logits

    restorer.net.predict_logits = recording  # the restorer is the caller's own: nothing to undo
    restored = restorer.restore_crops(faces, fidelity_weight=W)
    return torch.cat(tokens).numpy(), restored


# Where the CPU has no bfloat16 instructions (AVX2 only), bf16 is emulated: minutes for one official-size face.
# `auto` never picks it there; the small network's bf16 tests above check the same bounds on every CPU.
needs_native_bf16 = pytest.mark.skipif(not precision_module.cpu_has_native_bf16(),
                                       reason="bfloat16 is emulated on this CPU (the small network's test covers it)")


@needs_native_bf16
def test_bf16_meets_the_bounds_on_an_official_size_real_face(tmp_path_factory):
    """A full-size degraded real face (the case restoration is for) through fp32 and bf16: tokens and PSNR
    within bounds. The bounds are per face; batching is the small network's test."""
    faces = [dict(real_face_crops())["astronaut_low_quality"]]
    path = cached_codeformer_checkpoint(tmp_path_factory, "codeformer")
    results = {mode: restore_with_codes(FaceRestorer.from_file(path, device="cpu", precision=mode), faces)
               for mode in ("fp32", "bf16")}
    (codes32, faces32), (codes16, faces16) = results["fp32"], results["bf16"]
    assert codes32.shape == codes16.shape == (len(faces), 256)  # official size: a 16x16 token grid per face
    assert (codes16 == codes32).mean() >= MIN_TOKEN_AGREEMENT
    assert len(np.unique(codes32)) > 10  # a meaningful test: many different codes in play
    for fast, exact in zip(faces16, faces32, strict=True):
        assert fast.shape == (512, 512, 3)
        assert MIN_PSNR_DB <= psnr(fast, exact) < float("inf")  # close, and really computed in bf16


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_equals_singles_in_each_mode(small_runs, precision):
    run = small_runs[precision]
    assert run.codes_together.shape == run.codes_alone.shape == (len(run.together), SMALL_CONFIG.latent_size)
    assert np.array_equal(run.codes_together, run.codes_alone)
    for together, alone in zip(run.together, run.alone, strict=True):
        if precision == "fp32":  # float rounding: at most one grey level here and there
            assert np.abs(together.astype(int) - alone.astype(int)).max() <= 1
        else:  # bfloat16 rounding in a different kernel order
            assert psnr(together, alone) >= MIN_PSNR_DB


def test_bf16_small_network_stays_close_to_fp32(small_runs):
    fast, exact = small_runs["bf16"], small_runs["fp32"]
    assert np.array_equal(fast.codes_together, exact.codes_together)
    for a, b in zip(fast.together, exact.together, strict=True):
        assert MIN_PSNR_DB <= psnr(a, b) < float("inf")


# ------------------------------------------------------------------ torch.compile fallback


def test_compile_unavailable_falls_back_to_eager(monkeypatch, caplog, small_net, small_faces, small_runs):
    def no_compiler(function):
        raise RuntimeError("Dynamo is not supported on this Python\nsecond line")

    expected = small_runs["fp32"].alone  # the same network uncompiled, one face per batch
    monkeypatch.setattr(torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="codeformer.restorer"):
        restorer = small_restorer(small_net, "fp32", compile=True)
    assert not restorer.compiled
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "torch.compile failed (RuntimeError: Dynamo is not supported on this Python second line); "
        "running the network uncompiled"
    ]
    np.testing.assert_array_equal(restorer.restore_crops(small_faces[:1], fidelity_weight=W)[0], expected[0])


def test_compile_failing_on_first_call_falls_back_once(monkeypatch, caplog, small_net, small_faces, small_runs):
    calls = []

    def broken_compile(function):
        def compiled(*args):
            calls.append(len(args))
            raise RuntimeError("C++ compiler not found")

        return compiled

    expected = small_runs["fp32"].alone[:2]  # the same network uncompiled, one face per batch
    monkeypatch.setattr(torch, "compile", broken_compile)
    restorer = small_restorer(small_net, "fp32", compile=True)
    assert restorer.compiled  # nothing has failed yet
    with caplog.at_level(logging.WARNING, logger="codeformer.restorer"):
        restored = restorer.restore_crops(small_faces[:2], fidelity_weight=W, batch_size=1)
    assert not restorer.compiled and calls == [3]  # tried once, then eager for good
    assert sum("C++ compiler not found" in r.getMessage() for r in caplog.records) == 1
    for got, want in zip(restored, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_compile_wraps_the_generator(monkeypatch, small_net, small_faces):
    compiled = []

    def fake_compile(function):
        compiled.append(function)
        return function

    monkeypatch.setattr(torch, "compile", fake_compile)
    restorer = small_restorer(small_net, "bf16", compile=True)
    assert restorer.compiled and restorer.describe().endswith(", compiled")
    assert compiled == [restorer.net.decode]
    assert len(restorer.restore_crops(small_faces[:1], fidelity_weight=W)) == 1


# ------------------------------------------------------------------ process settings (CLI opt-in)


# One child process (a fresh interpreter importing torch) per mode serves both tests below: the settings are
# process-wide and must not leak into this test session. "tuned" applies them step by step and reports what
# each step set, then measures; "defaults" only measures.
_TUNE_THEN_REUSE_IN_A_THREAD = """
import json, sys, threading
import numpy as np
import torch
from codeformer.precision import configure_cpu_runtime as configure
report = {}
if sys.argv[1] == "tuned":
    report["set"] = [configure(flush_denormal=False, reuse_memory=False), configure(reuse_memory=False), configure()]
    report["denormal"] = torch.tensor([1e-40]).item()
if sys.platform.startswith("linux"):
    import resource
    faults = []
    def work():
        block = np.ones(2**27 // 8); del block  # 128 MiB, more than a thread's own arena can hold
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            block = np.ones(2**27 // 8); del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    thread = threading.Thread(target=work); thread.start(); thread.join()
    report["faults"] = faults[0]
print(json.dumps(report))
"""


def run_child(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _TUNE_THEN_REUSE_IN_A_THREAD, mode], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def tuned_child() -> dict:
    return run_child("tuned")


def test_configure_cpu_runtime_reports_what_it_set(tuned_child):
    nothing, flush_only, everything = tuned_child["set"]
    assert nothing == [] and flush_only == ["flush denormals"]
    assert everything[0] == "flush denormals"
    if sys.platform.startswith("linux"):
        assert everything[1].startswith("reuse freed memory")
    assert tuned_child["denormal"] == 0.0  # flushed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_reused_memory_also_serves_threads_started_after_the_tuning(tuned_child):
    """A web handler's or video stage's thread reuses freed large blocks too, instead of faulting in fresh pages."""
    untuned, tuned = run_child("defaults")["faults"], tuned_child["faults"]
    # Four fresh 128 MiB mappings fault in at least 4 x 64 pages (2 MiB transparent huge pages, which numpy
    # asks for; 4 KiB pages: 4 x 32768); reused blocks fault in none.
    assert untuned >= 4 * 64
    assert tuned < 16, (untuned, tuned)
