"""Precision modes for CodeFormer inference: what each mode runs in, and what ``auto`` picks on a device.

Modes (the ``--precision`` choices):

- ``fp32``: float32 throughout, the reference's arithmetic. The generator runs channels-last (NHWC)
  on CPU and CUDA, where its convolutions are faster; that moves output pixels by float rounding
  only (about 80 dB PSNR against plain NCHW) and never changes a code token.
- ``bf16``: the code tokens are decided in float32 exactly as in ``fp32`` (encoder, Transformer,
  logits, codebook, AdaIN); the generator and the fusion blocks, about two thirds of the work, run in
  bfloat16, channels-last.
- ``fp16``: the same split in float16, for GPUs (CUDA, Apple MPS).
- ``auto``: the fastest of these that is safe on the device; see :func:`resolve_precision`.

Why the tokens stay float32: each of the 256 positions picks the codebook entry with the largest
logit, and a change of token swaps a whole 32x32 patch of the output. On random-weight networks in
the official layout (the only ones available offline) the gap between the two best logits is below
0.003 for 1% of the positions, and bfloat16 anywhere in the encoder (even its first conv alone)
changes 1-5% of the tokens (the output then falls to about 16 dB PSNR against fp32); even the
channels-last float32 conv kernels, a few times less accurate than the NCHW ones, change about one
token in 3000. After the prediction, rounding only moves pixel values: the bfloat16 generator stays
above 40 dB PSNR against fp32 on real face crops with every token identical
(``benchmarks/bench_precision.py`` measures it).

Example::

    precision = resolve_precision("auto", torch.device("cpu"))   # "bf16" on CPUs with AVX512-BF16/AMX
    apply_precision(net, precision, torch.device("cpu"))
"""

from __future__ import annotations

import ctypes
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from codeformer.errors import OptionError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISION_CHOICES",
    "SINGLE_ARENA_ENV",
    "apply_precision",
    "configure_cpu_runtime",
    "cpu_has_native_bf16",
    "cuda_has_native_bf16",
    "describe_precision",
    "resolve_precision",
    "torch_dtype",
]

PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# The torch dtype of each resolved precision, by attribute name: torch is imported when one is needed
# (the command line's flags list the choices without it).
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# /proc/cpuinfo flags of x86 instructions that compute bfloat16 dot products in hardware: with them
# oneDNN's bf16 convolutions run 2-4x faster than float32 (measured: AVX512-BF16 on an AMD EPYC);
# without them bf16 is emulated and slower than float32.
CPU_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
# CUDA compute capability from which bfloat16 runs on tensor cores (Ampere, 8.0).
CUDA_BF16_CAPABILITY = (8, 0)

# glibc mallopt parameters (malloc.h) and the threshold configure_cpu_runtime sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Above glibc's default (at most 32 MiB), every activation of a 512x512 face (64-256 MiB in float32)
# is a fresh mmap whose pages the kernel faults in and zeroes on first touch, and it is unmapped
# again when freed: that costs as much as the convolutions. Kept in the heap instead, they are reused.
_KEEP_ALLOCATIONS_BELOW = 2**31 - 1  # mallopt's largest value (a C int): 2 GiB, a batch of 8 faces


# The environment that makes every thread of a new process allocate from the main heap (glibc reads it
# when the process starts), for processes whose work runs in threads started before the tuning.
SINGLE_ARENA_ENV: Mapping[str, str] = {"MALLOC_ARENA_MAX": "1"}


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype a resolved precision (``fp32``, ``bf16``, ``fp16``) computes in."""
    import torch

    if precision not in _DTYPE_NAMES:
        raise ValueError(f"precision {precision!r} is not resolved; pass it through resolve_precision first")
    return getattr(torch, _DTYPE_NAMES[precision])


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products in hardware (x86 AVX512-BF16 or AMX-BF16)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu helpers
    for probe in probes:
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return bool(_cpuinfo_flags() & set(CPU_BF16_FLAGS))


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device has bfloat16 tensor cores (compute capability 8.0, Ampere, or newer)."""
    import torch

    return torch.cuda.get_device_capability(device) >= CUDA_BF16_CAPABILITY


def resolve_precision(name: str, device: torch.device | str, *, native_bf16: bool | None = None) -> str:
    """The precision a ``precision`` choice means on ``device``: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` picks:

    - CPU: ``bf16`` where the CPU has native bfloat16 instructions (AVX512-BF16, AMX), which makes
      the generator about 2x faster at the quality bounds above; else ``fp32`` (emulated bf16 is slower).
    - CUDA: ``bf16`` on GPUs with bfloat16 tensor cores (compute capability >= 8.0), else ``fp32``.
      Not ``fp16``: its 5-bit exponent can overflow in the generator's unnormalised residual sums
      (spandrel marks CodeFormer as not fp16-safe), and that could not be checked on real weights
      here; ``fp16`` stays available when asked for.
    - MPS and anything else: ``fp32`` (half precision on Apple GPUs is unverified).

    ``native_bf16`` overrides the hardware probe (:func:`cpu_has_native_bf16` /
    :func:`cuda_has_native_bf16`). Explicit choices are checked: ``fp16`` is refused on the CPU
    (PyTorch computes it slowly there) and ``bf16`` on CUDA GPUs without bfloat16 support.
    """
    import torch

    choice = name.strip().lower()
    if choice not in PRECISION_CHOICES:
        raise OptionError("precision", name, f"unknown precision; choose one of {', '.join(PRECISION_CHOICES)}")
    device = torch.device(device)
    if choice == "fp32":
        return choice
    if device.type == "cpu":
        if choice == "fp16":
            raise OptionError("precision", "fp16", "CPUs compute float16 slowly; use bf16 or fp32")
        if choice == "auto":
            fast = cpu_has_native_bf16() if native_bf16 is None else native_bf16
            return "bf16" if fast else "fp32"
        return choice
    if device.type == "cuda":
        fast = cuda_has_native_bf16(device) if native_bf16 is None else native_bf16
        if choice == "auto":
            return "bf16" if fast else "fp32"
        if choice == "bf16" and not fast:
            raise OptionError("precision", "bf16", "this GPU has no bfloat16 support (compute capability below 8.0); use fp16 or fp32")
        return choice
    return "fp32" if choice == "auto" else choice


def apply_precision(net: torch.nn.Module, precision: str, device: torch.device) -> None:
    """Set a CodeFormer (already on ``device``) to compute in a resolved ``precision``.

    The generator and the fusion blocks take the precision's dtype, channels-last on CPU and CUDA
    (faster convolutions there; MPS keeps NCHW); what decides the tokens stays float32 NCHW.
    """
    import torch

    net.set_decoder_precision(torch_dtype(precision), channels_last=torch.device(device).type in ("cpu", "cuda"))


def describe_precision(precision: str) -> str:
    """One line for the log: what runs in which dtype."""
    if precision == "fp32":
        return "fp32"
    return f"{precision} (code prediction in fp32, generator in {precision})"


def configure_cpu_runtime(*, flush_denormal: bool = True, reuse_memory: bool = True) -> list[str]:
    """Process-wide settings that make CPU inference faster; returns what was set, for the log.

    For applications (the command line, benchmarks) to call once at start-up: the library never
    changes process state itself.

    - ``flush_denormal``: denormal floats become zero (``torch.set_flush_denormal``); tiny weights
      or activations otherwise take a slow microcode path on x86.
    - ``reuse_memory`` (glibc only): freed large blocks stay in the heap (``mallopt`` mmap and trim
      thresholds at 2 GiB) so that the next layer or face reuses them instead of faulting in fresh
      zeroed pages, which can cost about as much as the convolutions themselves
      (``benchmarks/bench_restore.py`` measures both). The price is
      a higher peak resident memory (about +1 GB for a batch of 4 faces): blocks of one size cannot
      serve larger requests, and nothing goes back to the system until the process ends. Threads
      started afterwards allocate from the same heap (one malloc arena): glibc builds a thread's
      own arena from 64 MiB pieces, so there a block larger than that is a fresh mapping every
      time whatever the thresholds, and a network run from a thread (a web server's handler) lost
      the gain. Processes that run their work in threads they did not start (Ray's workers) need
      ``MALLOC_ARENA_MAX=1`` in their environment instead (:data:`SINGLE_ARENA_ENV`).
    """
    import torch

    applied = []
    if flush_denormal and torch.set_flush_denormal(True):
        applied.append("flush denormals")
    if reuse_memory and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL("libc.so.6")
            kept = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_ALLOCATIONS_BELOW) == 1
            kept = libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_ALLOCATIONS_BELOW) == 1 and kept
            kept = libc.mallopt(_M_ARENA_MAX, 1) == 1 and kept
        except (OSError, AttributeError):
            kept = False
        if kept:
            applied.append("reuse freed memory (glibc mmap/trim threshold 2 GiB)")
    logger.debug("CPU runtime settings: %s", ", ".join(applied) or "none")
    return applied
