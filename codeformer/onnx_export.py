"""ONNX export of CodeFormer, with the fidelity weight as a live graph input, and of GFPGAN; an ONNX Runtime restorer.

The exported graphs use the interface other face tools already expect of CodeFormer and GFPGAN ONNX
files (facefusion's ``face_enhancer``, and the scripts built on its model files), so they drop in:

- ``input``: (N, 3, S, S) float32, RGB in [-1, 1] (S = 512 for the official files); N is dynamic;
- ``weight`` (CodeFormer only): (1,) float64, the fidelity weight ``w``, read at run time. facefusion
  feeds ``numpy.array([w]).astype(numpy.double)`` to any model that declares a ``weight`` input and
  nothing to one that does not, so GFPGAN graphs have no ``weight`` input;
- ``output``: (N, 3, S, S) float32, RGB, about [-1, 1], not clamped.

How the weight stays live. The reference decoder applies each CFT fusion block only when ``w > 0``:
``dec + w * (dec * scale + shift)``. The graph has no branch: it always computes the correction
``r = dec * scale + shift`` and adds ``max(w, 0) * r``. For ``w = 0`` the product is a signed zero for
every finite ``r``, and ``dec + (+-0) == dec`` exactly in IEEE arithmetic (also for ``dec = +-0``,
up to the sign of zero), so the output is bit for bit the graph without fusion; negative weights
clamp to 0, which is the reference's ``w > 0`` test. (``0 * r`` is NaN only for an infinite ``r``,
a float32 overflow in the fusion convolutions.) The price: the fusion convolutions run at ``w = 0``
too, where the library skips them.

What differs from the library's forward (equal up to float rounding, measured in
``tests/test_onnx_export.py``): the sub-pixel upsampling (:class:`codeformer.archs.vqgan.Upsample`)
writes its four phase outputs into a preallocated tensor through strided slice assignments, which the
exporter turns into ``ScatterND`` scatters fed by some 500 index-building nodes per upsampling; here
the phases are cropped, interleaved and rearranged with one pixel shuffle (ONNX ``DepthToSpace``):
the same arithmetic with the same 2x2 kernels, stored as constants. The fusion blocks compute out of
place with the weight as a tensor (the library multiplies in place by a Python number).
GFPGAN's modulated convolutions fold the batch into the convolution's groups (``groups = N``), and
ONNX fixes ``group`` in the graph; during the export they are computed in the equivalent
batch-independent form of StyleGAN2 (scale the input channels by the style, convolve with the
shared weight, scale the output channels by the demodulation factors), so the batch stays dynamic.

The exporter is PyTorch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it
exists in every PyTorch this project supports (2.1 on), needs no ``onnxscript``, and exports the
small test network in about 5 s against about 20 s for the ``torch.export``-based exporter (the
default from PyTorch 2.9 on), with the same results and ONNX Runtime speed. It is deprecated upstream; its warnings are
silenced here. Writing a graph needs the ``onnx`` package; running one needs ``onnxruntime``.

Example::

    net = build_codeformer(load_state_dict("weights/CodeFormer/codeformer.pth"))
    export_onnx(net, "codeformer.onnx")
    restorer = OnnxRestorer("codeformer.onnx")
    restored = restorer.restore_crops(crops, fidelity_weight=0.7)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, Union, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codeformer._atomic import atomic_path
from codeformer.archs.codeformer import GENERATOR_FUSE_BLOCK, CodeFormer, FuseSFTBlock
from codeformer.archs.gpen import GPEN
from codeformer.archs.restoreformer_pp import RestoreFormerPP
from codeformer.archs.vqgan import IMAGE_CHANNELS, Upsample, subpixel_kernels
from codeformer.errors import CodeFormerError, OptionError
from codeformer.fidelity import DEFAULT_FIDELITY_WEIGHT, NoFidelityControlError, check_fidelity_weight, fidelity_weight_for
from codeformer.restorer import (
    FaceRestorer,
    batch_to_crops,
    crops_to_batch,
)

if TYPE_CHECKING:
    import onnxruntime

    from codeformer.spandrel_restorer import SpandrelRestorer

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "META_ADAIN",
    "META_ARCHITECTURE",
    "META_FIXED_WEIGHT",
    "OUTPUT_NAME",
    "WEIGHT_NAME",
    "CodeFormerExport",
    "GFPGANExport",
    "OnnxRestorer",
    "batch_independent_modulated_convs",
    "export_onnx",
    "export_restorer_onnx",
    "onnx_session",
    "run_onnx",
]

# Graph input and output names: the ones facefusion-style tools look up.
INPUT_NAME = "input"
WEIGHT_NAME = "weight"
OUTPUT_NAME = "output"
BATCH_AXIS = "batch"  # name of the dynamic first axis of `input` and `output`

DEFAULT_OPSET = 17  # LayerNormalization is a single op from opset 17 on
MIN_OPSET = 14  # scaled_dot_product_attention exports from opset 14 on
# Batch of the example input the exporter traces with: more than 1, so that no axis of size 1 gets
# specialised into the graph as a broadcast.
_TRACE_BATCH = 2
# The weight tools feed: float64 of shape (1,).
WEIGHT_DTYPE = torch.float64
# Custom metadata keys (``onnxruntime.InferenceSession.get_modelmeta().custom_metadata_map``).
META_ARCHITECTURE = "codeformer.architecture"
META_ADAIN = "codeformer.adain"
META_FIXED_WEIGHT = "codeformer.fixed_weight"
META_TEMPLATE = "codeformer.template"  # the crops' alignment template (a name of face.alignment.CROP_TEMPLATES)
# Phases of a 2x nearest upsampling, in subpixel_kernels' order: (row, column) offset in the output.
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
_UPSAMPLE_FACTOR = 2
# ONNX Runtime's type names of the weight input, by the numpy dtype fed to it.
_ORT_FLOAT_TYPES: Mapping[str, type[np.floating]] = {"tensor(double)": np.float64, "tensor(float)": np.float32}
# Characters of an exporter error kept in the one-line message.
_ERROR_CHARS = 200


# ------------------------------------------------------------------------------------------ graphs


def _require_float32(net: nn.Module, what: str) -> None:
    dtypes = {tensor.dtype for tensor in net.state_dict().values() if tensor.is_floating_point()}
    if dtypes != {torch.float32}:
        names = ", ".join(sorted(str(dtype).replace("torch.", "") for dtype in dtypes))
        raise CodeFormerError(
            f"ONNX export needs a float32 {what}, this one has {names} tensors: load it with precision fp32"
        )


def _fuse(block: FuseSFTBlock, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``dec + w * (dec * scale + shift)`` (N, C, H, W) with a tensor ``w``, out of place (see the module docstring)."""
    cond = block.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))  # (N, C, H, W)
    correction = dec_feat * block.scale(cond) + block.shift(cond)
    return dec_feat + w * correction


class CodeFormerExport(nn.Module):
    """CodeFormer as one graph: ``forward(images, weight) -> images``, the weight a tensor (see the module docstring).

    ``images`` (N, 3, S, S) float32 in [-1, 1] (the graph's ``input``); ``weight`` (1,) float64 (any
    float dtype and a single element work in eager mode); returns (N, 3, S, S) float32 (``output``),
    the library's ``net(images, w, adain)[0]`` up to float rounding. Wraps ``net`` without changing
    it; ``net`` must compute in float32 (build it with ``build_codeformer``, or take a
    ``precision="fp32"`` :class:`FaceRestorer`'s).
    """

    def __init__(self, net: CodeFormer, *, adain: bool = True) -> None:
        super().__init__()
        _require_float32(net, "CodeFormer")
        self.net = net
        self.adain = adain
        self.image_size = net.image_size
        # generator block index -> connect_list entry whose fusion block follows it
        self._fusions = {GENERATOR_FUSE_BLOCK[size]: size for size in net.config.connect_list}
        # The sub-pixel kernels of each Upsample, derived once: the graph stores them as constants.
        self._upsample_kernels: dict[int, str] = {}
        with torch.no_grad():
            for index, block in enumerate(net.generator.blocks):
                if isinstance(block, Upsample):
                    name = f"upsample{index}_kernels"
                    kernels = subpixel_kernels(block.conv.weight).contiguous()  # (4*O, C, 2, 2)
                    self.register_buffer(name, kernels, persistent=False)
                    if block.conv.bias is not None:
                        self.register_buffer(f"upsample{index}_bias", block.conv.bias.repeat(len(_PHASES)),
                                             persistent=False)  # (4*O,)
                    self._upsample_kernels[index] = name

    def _upsample(self, index: int, block: Upsample, x: torch.Tensor) -> torch.Tensor:
        """Nearest 2x upsampling + 3x3 conv in sub-pixel form: (N, C, H, W) -> (N, O, 2H, 2W)."""
        _, _, height, width = x.shape
        out_channels = block.conv.out_channels
        kernels = getattr(self, self._upsample_kernels[index])
        bias = getattr(self, f"upsample{index}_bias", None)
        # Output (i + a, j + b) of phase (a, b) is pixel (2i + a, 2j + b) of the upsampled conv.
        phases = F.conv2d(x, kernels, bias, padding=1)  # (N, 4*O, H+1, W+1)
        crops = [
            phases[:, p * out_channels : (p + 1) * out_channels, a : a + height, b : b + width]
            for p, (a, b) in enumerate(_PHASES)
        ]  # 4 x (N, O, H, W)
        # pixel_shuffle reads channel c * 4 + 2a + b into pixel (2i + a, 2j + b) of channel c.
        grid = torch.stack(crops, dim=2).flatten(1, 2)  # (N, O*4, H, W)
        return F.pixel_shuffle(grid, _UPSAMPLE_FACTOR)

    def forward(self, images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S), (1,)
        # The reference fuses only for w > 0: clamping makes a negative weight the same as 0.
        w = weight.to(images.dtype).reshape(()).clamp(min=0.0)  # () float32
        lq_feat, features = self.net.encode(images)  # (N, 256, h, w), encoder features by resolution
        logits = self.net.predict_logits(lq_feat)  # (N, h*w, K)
        x = self.net.code_features(logits, lq_feat, adain=self.adain)  # (N, 256, h, w)
        for index, block in enumerate(self.net.generator.blocks):
            x = self._upsample(index, block, x) if isinstance(block, Upsample) else block(x)
            if index in self._fusions:
                size = self._fusions[index]
                x = _fuse(self.net.fuse_convs_dict[size], features[size], x, w)
        return x  # (N, 3, S, S)


def _modulated_conv(conv: nn.Module, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's modulated convolution without folding the batch into groups (equal up to float rounding).

    ``conv`` is spandrel's ``ModulatedConv2d``; x (N, C_in, H, W), style (N, num_style_feat).
    conv(x, W * s * d) = d * conv(x * s, W): the style ``s`` scales input channels, the demodulation
    ``d = rsqrt(sum over C_in, k, k of (W * s)^2 + eps)`` scales output channels.
    """
    scales = conv.modulation(style)  # (N, C_in)
    weight = conv.weight[0]  # (C_out, C_in, k, k), shared by the batch
    # Per-channel scaling commutes with the bilinear resampling: scale the smaller tensor.
    x = x * scales[:, :, None, None]
    if conv.sample_mode == "upsample":
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    elif conv.sample_mode == "downsample":
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    out = F.conv2d(x, weight, padding=conv.padding)  # (N, C_out, H', W')
    if conv.demodulate:
        energy = scales.square() @ weight.square().sum(dim=(2, 3)).t()  # (N, C_out)
        out = out * torch.rsqrt(energy + conv.eps)[:, :, None, None]
    return out


def _modulated_convs(net: nn.Module) -> list[nn.Module]:
    return [module for module in net.modules() if type(module).__name__ == "ModulatedConv2d"]


@contextlib.contextmanager
def batch_independent_modulated_convs(net: nn.Module) -> Iterator[None]:
    """Within the block, ``net``'s modulated convolutions (GFPGAN's StyleGAN2 decoder) use :func:`_modulated_conv`.

    Instance-level ``forward`` overrides, removed on exit: the classes stay untouched.
    """
    convs = _modulated_convs(net)
    try:
        for conv in convs:
            conv.forward = functools.partial(_modulated_conv, conv)
        yield
    finally:
        for conv in convs:
            conv.__dict__.pop("forward", None)


class GFPGANExport(nn.Module):
    """spandrel's GFPGAN (``GFPGANv1Clean``) as one graph: ``forward(images) -> images`` (``input`` -> ``output``).

    Runs the network as :class:`codeformer.spandrel_restorer.SpandrelRestorer` does: the fixed noise
    maps stored in the checkpoint (``randomize_noise=False``, deterministic) and no intermediate RGB
    outputs. Export it inside :func:`batch_independent_modulated_convs` for a dynamic batch.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        _require_float32(net, "GFPGAN")
        self.net = net
        self.image_size = 2**net.log_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 3, S, S)
        restored, _ = self.net(images, return_rgb=False, randomize_noise=False)
        return restored


# ------------------------------------------------------------------------------------------ export


class _ImageOnly(nn.Module):
    """A network that returns (image, extra) as one that returns the image (RestoreFormer++ adds its codes)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 3, S, S)
        out = self.net(images)
        return out[0] if isinstance(out, (tuple, list)) else out


def _is_gfpgan(net: nn.Module) -> bool:
    from spandrel.architectures.GFPGAN import GFPGAN

    return isinstance(net, GFPGAN)


# The TorchScript-based exporter; PyTorch 2.5+ picks between exporters with `dynamo`, older ones have only it.
_TORCHSCRIPT_EXPORTER: dict[str, Any] = (
    {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:_ERROR_CHARS]


def _trace_to_onnx(
    module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], opset: int,
    *, dynamic_batch: bool = True,
) -> bytes:
    """The serialized ONNX model of ``module`` traced on ``example``, batch axis dynamic unless told otherwise."""
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter's deprecation notice and its tracer warnings about shapes read as Python
        # numbers: the batch size is traced symbolically (dynamic_axes), and the tests check N = 1 and 3.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        # F.pad lowers to a reversed (step -1) Slice of the pads, which it then cannot fold: harmless.
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        try:
            torch.onnx.export(
                module, example, buffer, input_names=input_names, output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, **_TORCHSCRIPT_EXPORTER,
            )
        except RuntimeError as error:
            if "opset" in str(error).lower():
                raise OptionError("opset", opset, f"this PyTorch cannot export it ({_first_line(error)})") from None
            raise
    return buffer.getvalue()


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise CodeFormerError("writing ONNX files needs the onnx package: pip install onnx") from None
    return onnx


def _finish(serialized: bytes, size: int, metadata: Mapping[str, str], path: Path, batch: int | str = BATCH_AXIS) -> None:
    """Give the output its shape (N, 3, S, S), attach ``metadata``, check the model and write it atomically."""
    onnx = _import_onnx()
    model = onnx.load_model_from_string(serialized)
    # The TorchScript exporter's shape inference loses the spatial sides behind the pixel shuffles
    # and names them after some Conv: state them.
    output = next(value for value in model.graph.output if value.name == OUTPUT_NAME)
    dims = output.type.tensor_type.shape.dim
    for dim, value in zip(dims, (batch, IMAGE_CHANNELS, size, size)):
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    with atomic_path(path, suffix=".onnx") as temporary:
        onnx.save_model(model, str(temporary))


def _check_input_size(input_size: int | None, size: int, what: str) -> int:
    if input_size is not None and input_size != size:
        raise OptionError("input_size", input_size, f"{what} takes {size}x{size} crops only")
    return size


def _device_of(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    input_size: int | None = None,
    adain: bool = True,
    fixed_weight: float | None = None,
) -> Path:
    """Write ``net`` (our :class:`CodeFormer`, or spandrel's GFPGAN) as an ONNX graph to ``path``; returns the path.

    CodeFormer graphs take ``input`` and ``weight`` (the live fidelity weight), GFPGAN graphs ``input``
    only; both return ``output`` and have a dynamic batch (see the module docstring). ``input_size``
    checks the crop side (None: the network's own: 512 for the official files). ``adain`` matches the
    codebook features to the input's colour statistics, as the reference does for restoration and
    colorization (not inpainting). ``fixed_weight`` records, in the file's metadata, the one weight a
    checkpoint was trained for (colorization 0, inpainting 1); :class:`OnnxRestorer` then pins it.
    The network is not modified; the file is written atomically. Exporting the official CodeFormer
    took 34 s on two (busy) CPU cores and wrote 371 MiB (``benchmarks/bench_onnx.py``).

    Example::

        export_onnx(build_codeformer(load_state_dict("weights/CodeFormer/codeformer.pth")), "codeformer.onnx")
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise OptionError("opset", opset, f"must be a whole number >= {MIN_OPSET}")
    _import_onnx()  # before the minute of tracing, not after
    path = Path(path)
    if isinstance(net, CodeFormer):
        device = _device_of(net)
        size = _check_input_size(input_size, net.image_size, "this CodeFormer")
        check_fidelity_weight(fixed_weight)
        module: nn.Module = CodeFormerExport(net, adain=adain).eval()
        example: tuple[torch.Tensor, ...] = (
            torch.zeros(_TRACE_BATCH, IMAGE_CHANNELS, size, size, device=device),
            torch.tensor([DEFAULT_FIDELITY_WEIGHT], dtype=WEIGHT_DTYPE, device=device),
        )
        metadata = {META_ARCHITECTURE: "CodeFormer", META_ADAIN: str(int(adain))}
        if fixed_weight is not None:
            metadata[META_FIXED_WEIGHT] = repr(float(fixed_weight))
        serialized = _trace_to_onnx(module, example, [INPUT_NAME, WEIGHT_NAME], opset)
    elif isinstance(net, (GPEN, RestoreFormerPP)):
        # StyleGAN2's modulated convolutions fold the batch into the groups: one face per run, as
        # facefusion's files are made.
        if fixed_weight is not None:
            raise NoFidelityControlError(type(net).__name__, fixed_weight)
        gpen = isinstance(net, GPEN)
        size = _check_input_size(input_size, net.config.size if gpen else input_size or 512, type(net).__name__)
        _require_float32(net, type(net).__name__)
        metadata = {META_ARCHITECTURE: "GPEN" if gpen else "RestoreFormer++", META_TEMPLATE: "gpen" if gpen else "ffhq_512"}
        example = (torch.zeros(1, IMAGE_CHANNELS, size, size, device=_device_of(net)),)
        serialized = _trace_to_onnx(_ImageOnly(net).eval(), example, [INPUT_NAME], opset, dynamic_batch=False)
        _finish(serialized, size, metadata, path, batch=1)
        return path
    elif _is_gfpgan(net):
        if fixed_weight is not None:
            raise NoFidelityControlError("GFPGAN", fixed_weight)
        module = GFPGANExport(net).eval()
        size = _check_input_size(input_size, module.image_size, "this GFPGAN")
        example = (torch.zeros(_TRACE_BATCH, IMAGE_CHANNELS, size, size, device=_device_of(net)),)
        metadata = {META_ARCHITECTURE: "GFPGAN"}
        with batch_independent_modulated_convs(net):
            serialized = _trace_to_onnx(module, example, [INPUT_NAME], opset)
    else:
        raise CodeFormerError(
            f"cannot export a {type(net).__name__} to ONNX: export this project's CodeFormer, GPEN or "
            "RestoreFormer++ (codeformer.archs), or spandrel's GFPGAN (GFPGANv1.2-1.4 files)"
        )
    _finish(serialized, size, metadata, path)
    return path


def export_restorer_onnx(
    restorer: FaceRestorer | SpandrelRestorer, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET
) -> Path:
    """Export the network of a loaded restorer (as ``load_pipeline`` / the model table builds them); returns the path.

    A :class:`FaceRestorer` keeps its AdaIN setting and pinned weight; a
    :class:`~codeformer.spandrel_restorer.SpandrelRestorer` must hold a GFPGAN. The restorer must run
    in fp32 (export reads the network as it is).
    """
    if isinstance(restorer, FaceRestorer):
        return export_onnx(restorer.net, path, opset=opset, adain=restorer.adain, fixed_weight=restorer.fixed_weight)
    from codeformer.network_restorer import NetworkRestorer

    if isinstance(restorer, NetworkRestorer):
        return export_onnx(restorer.net, path, opset=opset, input_size=restorer.input_size)
    descriptor = getattr(restorer, "descriptor", None)
    if descriptor is None:
        raise CodeFormerError(f"cannot export {restorer.name} to ONNX: export CodeFormer or GFPGAN models")
    net = descriptor.model
    return export_onnx(net, path, opset=opset)


# ------------------------------------------------------------------------------------------ running


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CodeFormerError("running ONNX files needs ONNX Runtime: pip install onnxruntime") from None
    return onnxruntime


def onnx_session(
    path: str | os.PathLike[str], *, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for ``path`` with all graph optimisations; ``threads`` None: one per physical core."""
    ort = _import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise CodeFormerError(f"ONNX file {path} does not exist: write it with export_onnx first")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise OptionError("threads", threads, "must be at least 1")
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        raise CodeFormerError(f"ONNX Runtime could not load {path} ({_first_line(error)}): export it again") from None


def onnx_providers(device: torch.device) -> tuple[str, ...]:
    """ONNX Runtime's execution providers for a torch device: CUDA's when it is installed, else the CPU's."""
    ort = _import_onnxruntime()
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


def _weight_feed(spec: Any, weight: float | np.ndarray) -> np.ndarray:
    """``weight`` as the graph's ``weight`` input declares it: float64 or float32, shape (1,) or ()."""
    dtype = _ORT_FLOAT_TYPES.get(spec.type)
    if dtype is None:
        raise CodeFormerError(f"the graph's {WEIGHT_NAME} input is {spec.type}, not a float tensor")
    values = np.asarray(weight, dtype=dtype)
    if values.size != 1:
        raise OptionError("weight", weight, "must be a single number")
    return values.reshape(() if len(spec.shape) == 0 else (1,) * len(spec.shape))


Session = Union[str, "os.PathLike[str]", "onnxruntime.InferenceSession"]


def _as_session(model: Session) -> onnxruntime.InferenceSession:
    return onnx_session(model) if isinstance(model, (str, os.PathLike)) else model


def _run(session: onnxruntime.InferenceSession, batch: np.ndarray, weight: float | np.ndarray | None) -> np.ndarray:
    inputs = {spec.name: spec for spec in session.get_inputs()}
    feed = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
    if WEIGHT_NAME in inputs:
        if weight is None:
            raise OptionError("weight", None, "this graph takes a fidelity weight: give one in [0, 1]")
        feed[WEIGHT_NAME] = _weight_feed(inputs[WEIGHT_NAME], weight)
    elif weight is not None:
        raise NoFidelityControlError("this graph", float(np.asarray(weight).reshape(-1)[0]))
    return session.run([session.get_outputs()[0].name], feed)[0]


@overload
def run_onnx(model: Session, images: np.ndarray, weight: float | np.ndarray | None = None) -> np.ndarray: ...
@overload
def run_onnx(
    model: Session, images: Sequence[np.ndarray], weight: float | np.ndarray | None = None
) -> list[np.ndarray]: ...


def run_onnx(
    model: Session, images: np.ndarray | Sequence[np.ndarray], weight: float | np.ndarray | None = None
) -> np.ndarray | list[np.ndarray]:
    """Run an exported graph (a path, or an open ONNX Runtime session) on one batch, in one call.

    ``images``: a float batch (N, 3, S, S) in [-1, 1], which returns the raw ``output`` (N, 3, S, S)
    float32; or (S, S, 3) BGR uint8 crops, which returns restored crops with :class:`FaceRestorer`'s
    pre- and post-processing. ``weight`` (required by CodeFormer graphs, refused by GFPGAN ones): a
    number or a one-element float32 / float64 array, converted to what the graph declares (float64
    (1,) for ours). Opening a path reads the whole file: keep a session for repeated runs.
    """
    session = _as_session(model)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype != np.uint8:
        return _run(session, images, weight)  # (N, 3, S, S)
    if len(images) == 0:
        return []
    batch = crops_to_batch(list(images), torch.device("cpu")).numpy()  # (N, 3, S, S) float32
    return batch_to_crops(torch.from_numpy(_run(session, batch, weight)))


# Other tools' face restoration files, by file name: the alignment template their crops use
# (facefusion's face enhancer models; every other one of them uses ffhq_512).
KNOWN_FILE_TEMPLATES: Mapping[str, str] = {
    "codeformer": "ffhq_512", "gfpgan_1.2": "ffhq_512", "gfpgan_1.3": "ffhq_512", "gfpgan_1.4": "ffhq_512",
    "gpen_bfr_256": "arcface_128", "gpen_bfr_512": "ffhq_512", "gpen_bfr_1024": "ffhq_512",
    "gpen_bfr_2048": "ffhq_512", "restoreformer_plus_plus": "ffhq_512",
}


def onnx_template(path: Path, metadata: Mapping[str, str], template: str | None) -> str:
    """The crop template a graph's faces are aligned with: ``template`` if given, else what the file says."""
    from codeformer.face.alignment import CROP_TEMPLATES

    if template is not None:
        if template not in CROP_TEMPLATES:
            raise OptionError("template", template, f"choose one of {', '.join(CROP_TEMPLATES)}")
        return template
    if META_TEMPLATE in metadata:  # written here
        return metadata[META_TEMPLATE]
    if META_ARCHITECTURE in metadata:  # written here before templates were recorded: FFHQ-aligned
        return "ffhq_512"
    known = KNOWN_FILE_TEMPLATES.get(path.stem.lower())
    if known is None:
        raise OptionError("template", None, f"{path.name} is not a file this program knows: say which alignment "
                                            f"template its crops use ({', '.join(CROP_TEMPLATES)})")
    return known


class OnnxRestorer:
    """A face restoration graph run by ONNX Runtime, as a :class:`~codeformer.restorer.Restorer`.

    Ours (``codeformer export onnx``) and other tools' files with the same interface: an ``input``
    of square crops (N, 3, S, S) RGB in [-1, 1], an optional ``weight`` (the fidelity weight, fed as
    the graph declares it, float64 for facefusion's files), the first output; fixed-batch graphs too.
    Same pre- and post-processing as :class:`FaceRestorer` (float32 only). The crop size is read from
    the graph; the alignment template from ``template`` (``ffhq_512``, ``arcface_128``), else from
    the file (:func:`onnx_template`). ``fixed_weight`` pins the weight (None: the file's pinned weight,
    if it records one); ``threads``: ONNX Runtime's intra-op threads (None: one per physical core).

    Example::

        restorer = OnnxRestorer("codeformer.onnx", threads=4)
        restored = restorer.restore_crops(crops, fidelity_weight=0.5)
    """

    precision = "fp32"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        fixed_weight: float | None = None,
        template: str | None = None,
    ) -> None:
        from codeformer.face.alignment import CROP_TEMPLATES

        self.path = Path(path)
        self.name = name or self.path.name
        self.session = onnx_session(self.path, threads=threads, providers=providers)
        inputs = {spec.name: spec for spec in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise CodeFormerError(f"{self.path} has no {INPUT_NAME!r} input: it is not a face restoration graph")
        shape = inputs[INPUT_NAME].shape  # [batch, 3, S, S]; symbolic axes are strings
        if len(shape) != 4 or not isinstance(shape[-1], int) or shape[-1] != shape[-2]:
            raise CodeFormerError(f"{self.path} takes input of shape {shape}, not square crops (N, 3, S, S)")
        self.input_size: int = shape[-1]
        # A graph exported with a fixed batch runs that many crops at a time.
        self._graph_batch: int | None = shape[0] if isinstance(shape[0], int) else None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.template_name = onnx_template(self.path, metadata, template)
        self.template: np.ndarray = CROP_TEMPLATES[self.template_name] * self.input_size  # (5, 2) float64
        if fixed_weight is None and META_FIXED_WEIGHT in metadata:
            fixed_weight = float(metadata[META_FIXED_WEIGHT])
        self._has_weight = WEIGHT_NAME in inputs
        self.fixed_weight = fixed_weight if self._has_weight else None

    @property
    def supports_fidelity(self) -> bool:
        return self._has_weight and self.fixed_weight is None

    def describe(self) -> str:
        """One line for the log, e.g. ``onnxruntime 1.20.1, CPUExecutionProvider, fp32, 512x512 crops``."""
        ort = _import_onnxruntime()
        providers = "+".join(self.session.get_providers())
        return (f"onnxruntime {ort.__version__}, {providers}, fp32, {self.input_size}x{self.input_size} crops, "
                f"{self.template_name} template")

    def _weight(self, fidelity_weight: float | None) -> float | None:
        default = DEFAULT_FIDELITY_WEIGHT if self._has_weight else None
        return fidelity_weight_for(self.name, fidelity_weight, default=default, fixed=self.fixed_weight)

    def restore_crops(
        self, crops: Sequence[np.ndarray], *, fidelity_weight: float | None = None, batch_size: int = 4
    ) -> list[np.ndarray]:
        """Restore (S, S, 3) BGR uint8 crops; as many restored crops, in order (see :class:`FaceRestorer.restore`)."""
        weight = self._weight(fidelity_weight)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionError("batch_size", batch_size, "must be a whole number >= 1")
        expected = (self.input_size, self.input_size, IMAGE_CHANNELS)
        for i, crop in enumerate(crops):
            if not isinstance(crop, np.ndarray) or crop.shape != expected or crop.dtype != np.uint8:
                got = f"{crop.shape} {crop.dtype}" if isinstance(crop, np.ndarray) else type(crop).__name__
                raise ValueError(
                    f"face crop {i} must be a {expected} uint8 BGR array, got {got}; resize and convert crops first"
                )
        step = batch_size if self._graph_batch is None else self._graph_batch
        restored: list[np.ndarray] = []
        for start in range(0, len(crops), step):
            chunk = list(crops[start : start + step])
            count = len(chunk)
            if self._graph_batch is not None:  # a fixed-batch graph: fill the last batch with copies
                chunk += [chunk[-1]] * (self._graph_batch - count)
            restored += run_onnx(self.session, chunk, weight)[:count]
        return restored
