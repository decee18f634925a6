"""The model table: every named network the project can load, in one place.

Each :class:`ModelSpec` says what a name means: its kind (restorer, detector, parser, upsampler), its
pretrained file(s) in :data:`codeformer.weights.WEIGHTS` (URL, sha256, size and license live there),
how it is built, and for restorers their input size, alignment template and task. Everything that
lists model names (``available_models()``, the command line's ``choices=``, the web app's menus) reads
this table, and an unknown name is refused here, before anything is loaded or downloaded.

The registry resolves each spec's files (:func:`codeformer.weights.weight_path`: downloaded and
checked on first use) and hands them to the network's own loader, which knows nothing of names or
weights roots. Adding a network is one entry here plus its own module. Builders import their
networks lazily: asking for the names, or for one spec, imports no network code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from codeformer.errors import CodeFormerError
from codeformer.fidelity import DEFAULT_FIDELITY_WEIGHT
from codeformer.weights import weight_entry, weight_path

if TYPE_CHECKING:
    import torch

    from codeformer.face.detection import FaceDetector
    from codeformer.face.parsing import FaceParser
    from codeformer.restorer import Restorer
    from codeformer.upsampler import Upsampler

ModelKind = Literal["restorer", "detector", "parser", "upsampler"]
# What a restorer does to an aligned face, and so how the pipeline drives it.
Task = Literal["restore", "colorize", "inpaint", "reconstruct"]

DEFAULT_MODEL = "codeformer"
DEFAULT_DETECTOR = "retinaface_resnet50"
DEFAULT_PARSER = "parsenet"
# The reference's --bg_upsampler value; it always meant Real-ESRGAN x2plus.
DEFAULT_UPSAMPLER = "realesrgan"


class UnknownModelError(CodeFormerError, ValueError):
    """A model name that is not in the table; :attr:`choices` lists the valid ones of that kind."""

    def __init__(self, kind: str, name: str, choices: tuple[str, ...]) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}")


@dataclass(frozen=True)
class LoadContext:
    """Where and how a builder puts its network: device, weights root, and restorer options."""

    device: torch.device
    weights_dir: str | os.PathLike[str] | None = None
    checkpoint: Path | None = None  # a file to use instead of the table's (restorers)
    precision: str = "fp32"
    compile: bool = False
    tile: int = 400  # upsamplers: tile side, 0 = whole picture
    half: bool | None = None  # upsamplers: None = fp16 on CUDA, fp32 elsewhere
    template: str | None = None  # ONNX restorers: their crops' alignment template (None: known from the file)

    def file(self, spec: ModelSpec) -> Path:
        """The checkpoint to load for ``spec``: the given one, else its table file (downloaded on first use)."""
        return self.checkpoint if self.checkpoint is not None else weight_path(spec.weights[0], self.weights_dir)

    def files(self, spec: ModelSpec) -> list[Path]:
        """Every table file of ``spec``, in its order (downloaded on first use)."""
        return [weight_path(key, self.weights_dir) for key in spec.weights]


@dataclass(frozen=True)
class ModelSpec:
    """One named network: what it is, which files it needs, how to build it."""

    name: str
    kind: ModelKind
    weights: tuple[str, ...]  # keys of codeformer.weights.WEIGHTS, main file first
    description: str
    builder: Callable[[ModelSpec, LoadContext], Any] = field(repr=False)
    # Restorers only.
    task: Task | None = None
    input_size: int | None = None  # side of the aligned crops
    template: str | None = None  # alignment template (codeformer.face.alignment.TEMPLATES at input_size)
    default_fidelity: float | None = None  # the fidelity weight when none is given; None: no fidelity control
    fixed_fidelity: float | None = None  # CodeFormer variants trained for one weight run at it, unchangeable
    # Detectors only: the landmark order they return ("ffhq" or "dlib").
    landmarks: str | None = None

    @property
    def license(self) -> str:
        """The license of its weights (the main file's)."""
        return weight_entry(self.weights[0]).license if self.weights else "the checkpoint's own"

    @property
    def supports_fidelity(self) -> bool:
        return self.default_fidelity is not None

    def load(self, context: LoadContext) -> Any:
        """Build the network on ``context.device`` (downloading missing weights)."""
        return self.builder(self, context)


# ------------------------------------------------------------------------------------------ builders


def _codeformer(spec: ModelSpec, context: LoadContext) -> Restorer:
    from codeformer.restorer import FaceRestorer

    # Inpainting was trained without AdaIN (the reference's inpainting script turns it off).
    return FaceRestorer.from_file(context.file(spec), context.device, precision=context.precision,
                                  compile=context.compile, name=spec.name, fixed_weight=spec.fixed_fidelity,
                                  adain=spec.task != "inpaint")


def _spandrel_face(spec: ModelSpec, context: LoadContext) -> Restorer:
    from codeformer.spandrel_restorer import SpandrelRestorer

    return SpandrelRestorer.from_file(context.file(spec), context.device, precision=context.precision, name=spec.name)


def _onnx_file(spec: ModelSpec, context: LoadContext) -> Restorer:
    from codeformer.onnx_export import OnnxRestorer, onnx_providers

    return OnnxRestorer(context.file(spec), name=spec.name, template=context.template,
                        providers=onnx_providers(context.device))


def _checkpoint_file(spec: ModelSpec, context: LoadContext) -> Restorer:
    """A face restoration file the user brings: ONNX, our CodeFormer if it is one, else through spandrel."""
    from codeformer.archs.codeformer import is_codeformer_state_dict
    from codeformer.weights import load_state_dict

    if context.file(spec).suffix.lower() == ".onnx":
        return _onnx_file(spec, context)
    if is_codeformer_state_dict(load_state_dict(context.file(spec))):
        return _codeformer(spec, context)
    return _spandrel_face(spec, context)


def checkpoint_spec(path: Path) -> ModelSpec:
    """The spec of a restorer loaded from a file the user brings (GFPGAN, RestoreFormer, CodeFormer, ...)."""
    return ModelSpec(path.name, "restorer", (), f"face restoration checkpoint {path}", _checkpoint_file,
                     task="restore", input_size=None, template="ffhq")


def _gpen(spec: ModelSpec, context: LoadContext) -> Restorer:
    from codeformer.network_restorer import NetworkRestorer

    return NetworkRestorer.gpen_from_file(context.file(spec), context.device, precision=context.precision,
                                          name=spec.name)


def _restoreformer_pp(spec: ModelSpec, context: LoadContext) -> Restorer:
    from codeformer.network_restorer import NetworkRestorer

    return NetworkRestorer.restoreformer_pp_from_file(context.file(spec), context.device,
                                                      precision=context.precision, name=spec.name)


def _vqgan(spec: ModelSpec, context: LoadContext) -> Restorer:
    from codeformer.restorer import VQGANReconstructor

    return VQGANReconstructor.from_file(context.file(spec), context.device, name=spec.name)


def _retinaface(network_name: str) -> Callable[[ModelSpec, LoadContext], FaceDetector]:
    def build(spec: ModelSpec, context: LoadContext) -> FaceDetector:
        from codeformer.face.retinaface import load_retinaface

        return load_retinaface(context.file(spec), network_name, device=context.device, name=spec.name)

    return build


def _dlib(spec: ModelSpec, context: LoadContext) -> FaceDetector:
    from codeformer.face.dlib_detector import load_dlib_detector

    detector_file, predictor_file = context.files(spec)
    return load_dlib_detector(detector_file, predictor_file)


def _yolov5face(spec: ModelSpec, context: LoadContext) -> FaceDetector:
    from codeformer.face.yolov5face import load_yolov5face

    return load_yolov5face(context.file(spec), spec.name, device=context.device)


def _parsenet(spec: ModelSpec, context: LoadContext) -> FaceParser:
    import torch

    from codeformer.face.parsing import load_face_parser
    from codeformer.precision import resolve_precision

    # In bfloat16 where the restorer is (precision auto on a CPU or GPU with bf16, or bf16): a label
    # changes only where two classes nearly tie, and the final pictures stay above 59 dB PSNR against fp32's
    # (README, "Speed"); fp16 is not checked for ParseNet, which then stays in float32.
    bf16 = resolve_precision(context.precision, context.device) == "bf16"
    return load_face_parser(context.file(spec), device=context.device,
                            dtype=torch.bfloat16 if bf16 else torch.float32)


def _upsampler(spec: ModelSpec, context: LoadContext) -> Upsampler:
    from codeformer.upsampler import load_upsampler

    return load_upsampler(context.file(spec), device=context.device, tile=context.tile, half=context.half)


def _table(*specs: ModelSpec) -> Mapping[str, ModelSpec]:
    return MappingProxyType({spec.name: spec for spec in specs})


_FACE = dict(input_size=512, template="ffhq")

MODELS: Mapping[str, ModelSpec] = _table(
    # Restorers: aligned 512x512 faces in, restored faces out.
    ModelSpec("codeformer", "restorer", ("CodeFormer/codeformer.pth",),
              "CodeFormer: blind face restoration, fidelity weight w trades quality (0) for fidelity (1)",
              _codeformer, task="restore", default_fidelity=DEFAULT_FIDELITY_WEIGHT, **_FACE),
    ModelSpec("codeformer_colorization", "restorer", ("CodeFormer/codeformer_colorization.pth",),
              "CodeFormer colorization of black-and-white or faded aligned faces",
              _codeformer, task="colorize", fixed_fidelity=0.0, **_FACE),
    ModelSpec("codeformer_inpainting", "restorer", ("CodeFormer/codeformer_inpainting.pth",),
              "CodeFormer inpainting: fills the pure-white painted pixels of aligned faces",
              _codeformer, task="inpaint", fixed_fidelity=1.0, **_FACE),
    ModelSpec("gfpgan_v1.3", "restorer", ("gfpgan/GFPGANv1.3.pth",),
              "GFPGAN v1.3: natural-looking faces, keeps identity well; no fidelity control",
              _spandrel_face, task="restore", **_FACE),
    ModelSpec("gfpgan_v1.4", "restorer", ("gfpgan/GFPGANv1.4.pth",),
              "GFPGAN v1.4: more detail than v1.3, keeps identity well; no fidelity control",
              _spandrel_face, task="restore", **_FACE),
    *(ModelSpec(f"gpen_bfr_{size}", "restorer", (f"gpen/GPEN-BFR-{size}.pth",),
                f"GPEN-BFR {size}: a StyleGAN2 prior, natural skin and detail; {size}x{size} faces",
                _gpen, task="restore", input_size=size, template="gpen") for size in (256, 512, 1024, 2048)),
    ModelSpec("restoreformer_plus_plus", "restorer", ("restoreformer/RestoreFormer++.ckpt",),
              "RestoreFormer++: keeps who the person is best among single-pass models; no fidelity control",
              _restoreformer_pp, task="restore", **_FACE),
    ModelSpec("vqgan", "restorer", ("CodeFormer/vqgan_code1024.pth",),
              "CodeFormer's VQGAN alone: what the codebook can represent of an aligned face",
              _vqgan, task="reconstruct", **_FACE),
    # Face detectors: boxes and 5 landmarks.
    ModelSpec("retinaface_resnet50", "detector", ("facelib/detection_Resnet50_Final.pth",),
              "RetinaFace ResNet-50: the reference's default, accurate", _retinaface("resnet50"), landmarks="ffhq"),
    ModelSpec("retinaface_mobile0.25", "detector", ("facelib/detection_mobilenet0.25_Final.pth",),
              "RetinaFace MobileNet-0.25: fast, misses more small faces", _retinaface("mobile0.25"),
              landmarks="ffhq"),
    ModelSpec("dlib", "detector", ("dlib/mmod_human_face_detector-4cb19393.dat",
                                   "dlib/shape_predictor_5_face_landmarks-c4b1e980.dat"),
              "dlib CNN detector + 5-point landmarks (CPU only, slow)", _dlib, landmarks="dlib"),
    ModelSpec("YOLOv5l", "detector", ("facelib/yolov5l-face.pth",),
              "YOLOv5-face large: accurate on small and crowded faces", _yolov5face, landmarks="ffhq"),
    ModelSpec("YOLOv5n", "detector", ("facelib/yolov5n-face.pth",),
              "YOLOv5-face nano: the fastest", _yolov5face, landmarks="ffhq"),
    # Face parsing: the mask faces are blended with.
    ModelSpec("parsenet", "parser", ("facelib/parsing_parsenet.pth",),
              "ParseNet face parsing (blend mask of skin, hair, features)", _parsenet),
    # Upsamplers: background and faces.
    ModelSpec("realesrgan", "upsampler", ("realesrgan/RealESRGAN_x2plus.pth",),
              "Real-ESRGAN x2plus: the reference's background upsampler", _upsampler),
)


# ------------------------------------------------------------------------------------------ queries


# How errors name each kind.
_KIND_WORDS: Mapping[ModelKind, str] = {
    "restorer": "model", "detector": "face detector", "parser": "face parser", "upsampler": "upsampler",
}


def names(kind: ModelKind) -> tuple[str, ...]:
    """The table's names of one kind, in table order."""
    return tuple(name for name, spec in MODELS.items() if spec.kind == kind)


def model_spec(name: str, kind: ModelKind) -> ModelSpec:
    """The spec of ``name``, which must be of ``kind``; :class:`UnknownModelError` (listing the names) if not."""
    spec = MODELS.get(name)
    if spec is None or spec.kind != kind:
        raise UnknownModelError(_KIND_WORDS[kind], name, names(kind))
    return spec


def available_models() -> list[str]:
    """Names of the face restorers ``load_pipeline`` takes (a checkpoint path is accepted too)."""
    return list(names("restorer"))


def whole_picture_models() -> list[str]:
    """The restorers that restore faces in whole pictures and videos (not only aligned crops)."""
    return [name for name in names("restorer") if MODELS[name].task == "restore"]


def available_detectors() -> list[str]:
    """Names of the face detectors ``load_pipeline(detector=...)`` takes."""
    return list(names("detector"))


def available_upsamplers() -> list[str]:
    """Names of the upsamplers ``load_pipeline(bg_upsampler=...)`` takes (a model file path is accepted too)."""
    return list(names("upsampler"))


# ------------------------------------------------------------------------------------------ loading by name


def load_model(name: str, kind: ModelKind, *, device: str | torch.device = "auto",
               weights_dir: str | os.PathLike[str] | None = None, **context: Any) -> Any:
    """The network ``name`` of ``kind``, built on ``device`` from its files (downloaded on first use).

    ``context``: the other :class:`LoadContext` fields (``precision``, ``tile``, ``half`` ...).
    """
    from codeformer.device import resolve_device

    spec = model_spec(name, kind)
    return spec.load(LoadContext(device=resolve_device(device), weights_dir=weights_dir, **context))


def load_detector(name: str, *, device: str | torch.device = "auto",
                  weights_dir: str | os.PathLike[str] | None = None) -> FaceDetector:
    """A ready face detector by name (one of :func:`available_detectors`). Example::

        detector = load_detector("retinaface_resnet50", device="cpu")
        faces = detector.detect(cv2.imread("group.jpg"))
    """
    return load_model(name, "detector", device=device, weights_dir=weights_dir)


def load_parser(*, device: str | torch.device = "auto", weights_dir: str | os.PathLike[str] | None = None) -> FaceParser:
    """The face parser (ParseNet) with its official weights."""
    return load_model(DEFAULT_PARSER, "parser", device=device, weights_dir=weights_dir)
