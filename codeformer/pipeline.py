"""The front door: :func:`load_pipeline` loads every network a job needs, :class:`Pipeline` runs it.

Example::

    import codeformer
    pipe = codeformer.load_pipeline("codeformer", detector="retinaface_resnet50")
    result = pipe.restore("photo.jpg", fidelity_weight=0.5, upscale=2)
    result.image          # (H * 2, W * 2[, C]) in the input's dtype and channel order
    result.faces[0].box   # where the first restored face is, in the input's pixels

Names are checked against :mod:`codeformer.registry` before anything loads or downloads, so a
typo costs nothing. Whole pictures go through :mod:`codeformer.face.pipeline` (detect, align,
restore, parse, paste back); aligned faces (``has_aligned=True``) go straight to the restorer, and
the colorization, inpainting and VQGAN models work on aligned faces only, as in the reference.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, Union

import numpy as np

from codeformer.aligned import inpaint_aligned, paint_mask_of, prepare_aligned_face, restore_aligned
from codeformer.color import GRAY_MODES, GrayMode
from codeformer.device import resolve_device
from codeformer.errors import CodeFormerError, OptionError
from codeformer.face.alignment import estimate_alignment, warp_face
from codeformer.face.detection import find_faces
from codeformer.face.pipeline import (
    Models,
    RestoredFace,
    RestoreOptions,
    RestoreResult,
    alignment_template,
    restore_pictures,
    working_image,
)
from codeformer.face.selection import DEFAULT_REFERENCE_DISTANCE, FaceSelection
from codeformer.imageio import DEFAULT_MAX_PIXELS, Picture, picture_from_array, read_image
from codeformer.precision import resolve_precision
from codeformer.registry import (
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    DEFAULT_PARSER,
    DEFAULT_UPSAMPLER,
    LoadContext,
    ModelSpec,
    checkpoint_spec,
    model_spec,
    names,
)
from codeformer.restorer import NoFidelityControlError, Restorer

if TYPE_CHECKING:
    from codeformer.face.detection import FaceDetector
    from codeformer.face.identity import FaceEmbedder
    from codeformer.face.parsing import FaceParser
    from codeformer.upsampler import Upsampler
    from codeformer.video import FrameProcessor, VideoStats

__all__ = ["Pipeline", "RestoreResult", "RestoredFace", "load_pipeline"]

logger = logging.getLogger(__name__)

ImageInput = Union[np.ndarray, str, "os.PathLike[str]", Picture]
PathLike = Union[str, "os.PathLike[str]"]
# Faces per network forward when the caller does not say: on a CPU a batch is no faster than one
# face at a time (a 512x512 face already keeps every core busy) and each face in it adds about
# 0.45 GiB of activations (fp32); GPUs need batches to fill up.
CPU_BATCH_SIZE = 1
GPU_BATCH_SIZE = 4
DEFAULT_TILE = 400  # upsampler tile side: the reference's --bg_tile


def _upsampler_choice(value: str | os.PathLike[str] | None) -> str | Path | None:
    """A registry upsampler name, an existing model file, or None; anything else is refused now."""
    if value is None:
        return None
    if isinstance(value, str) and value in names("upsampler"):
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return path
    model_spec(str(value), "upsampler")  # raises UnknownModelError listing the names
    raise AssertionError("unreachable")


def _model_choice(model: str | os.PathLike[str]) -> tuple[ModelSpec, Path | None]:
    """The restorer's spec and, for a checkpoint path, the file (any face restoration checkpoint)."""
    if isinstance(model, str) and model in names("restorer"):
        return model_spec(model, "restorer"), None
    path = Path(model).expanduser()
    if path.is_file():
        return checkpoint_spec(path), path
    return model_spec(str(model), "restorer"), None  # raises with the list of names


class Pipeline:
    """Loaded networks and the settings they were loaded with; call :meth:`restore` on pictures.

    Build it with :func:`load_pipeline`. The networks are reused across calls; a pipeline is not
    meant to be called from several threads at once (serialise calls, as the web app's queue does).
    """

    def __init__(self, spec: ModelSpec, restorer: Restorer, *, detector: FaceDetector | None = None,
                 parser: FaceParser | None = None, bg_upsampler: Upsampler | None = None,
                 face_upsampler: Upsampler | None = None, batch_size: int = CPU_BATCH_SIZE,
                 progress: bool = False) -> None:
        self.spec = spec
        self.restorer = restorer
        self.detector = detector
        self.parser = parser
        self.bg_upsampler = bg_upsampler
        self.face_upsampler = face_upsampler
        self.batch_size = batch_size
        self.progress = progress  # progress bars inside long steps (upsampler tiles)
        self._embedder: FaceEmbedder | None = None

    @property
    def task(self) -> str:
        """What the model does to a face: restore, colorize, inpaint or reconstruct."""
        return self.spec.task or "restore"

    @property
    def whole_pictures(self) -> bool:
        """Whether whole pictures (not only aligned faces) can be restored: a restoration model with a detector."""
        return self.task == "restore" and self.detector is not None

    def describe(self) -> str:
        parts = [f"{self.restorer.name} ({self.restorer.describe()})"]
        if self.detector is not None:
            parts.append(f"detector {self.detector.name}")
        if self.bg_upsampler is not None or self.face_upsampler is not None:
            upsampler = self.bg_upsampler or self.face_upsampler
            assert upsampler is not None
            used = [what for what, on in (("background", self.bg_upsampler), ("faces", self.face_upsampler)) if on]
            parts.append(f"upsampler {upsampler.describe()} for {' and '.join(used)}")
        return "; ".join(parts)

    # ----------------------------------------------------------------------------------- pictures

    def restore(
        self,
        image: ImageInput,
        *,
        fidelity_weight: float | None = None,
        upscale: int = 2,
        has_aligned: bool = False,
        only_center_face: bool = False,
        largest_face: bool = False,
        face_index: Sequence[int] | None = None,
        min_face_size: float | None = None,
        reference_face: ImageInput | None = None,
        reference_distance: float = DEFAULT_REFERENCE_DISTANCE,
        draw_box: bool = False,
        grayscale: GrayMode = "auto",
        measure_identity: bool = False,
    ) -> RestoreResult:
        """Restore the faces of one picture (a numpy array in OpenCV order, or a path).

        ``fidelity_weight``: CodeFormer's ``w``, 0 (quality) .. 1 (fidelity); None: the model's
        default. ``upscale``: whole pictures come back at input size x upscale. ``has_aligned``: the
        picture is one aligned face crop. Which faces: all by default, or ``only_center_face`` (the
        face nearest the centre), ``largest_face``, ``face_index`` (faces numbered left to right
        from 0), ``min_face_size`` (pixels, short side of the box), ``reference_face`` (a photo of the
        person to restore; faces farther than ``reference_distance`` from them are left alone); faces
        not chosen stay exactly as in the upscaled picture and are listed in ``result.skipped``.
        ``grayscale``: keep restored faces gray in gray pictures (auto), always, or never.
        ``measure_identity``: give each face the identity distance between its input and restored
        crop (dlib's face-recognition network). The input is never modified.
        """
        options = self.options(fidelity_weight=fidelity_weight, upscale=upscale, only_center_face=only_center_face,
                               largest_face=largest_face, face_index=face_index, min_face_size=min_face_size,
                               reference_face=reference_face, reference_distance=reference_distance,
                               draw_box=draw_box, grayscale=grayscale, measure_identity=measure_identity)
        picture = as_picture(image, max_pixels=options.max_pixels)
        if has_aligned:
            return self.restore_aligned([picture], options)[0]
        return self.restore_pictures([picture], options)[0]

    def options(
        self,
        *,
        fidelity_weight: float | None = None,
        upscale: int = 2,
        only_center_face: bool = False,
        largest_face: bool = False,
        face_index: Sequence[int] | None = None,
        min_face_size: float | None = None,
        reference_face: ImageInput | None = None,
        reference_distance: float = DEFAULT_REFERENCE_DISTANCE,
        draw_box: bool = False,
        grayscale: GrayMode = "auto",
        measure_identity: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> RestoreOptions:
        """Checked per-call options (see :meth:`restore`); a reference face is embedded here, once."""
        if fidelity_weight is not None and not self.restorer.supports_fidelity:
            raise NoFidelityControlError(self.restorer.name, fidelity_weight)
        if fidelity_weight is not None and not 0.0 <= fidelity_weight <= 1.0:
            raise OptionError("fidelity_weight", fidelity_weight, "is outside [0, 1]")
        if isinstance(upscale, bool) or not isinstance(upscale, (int, np.integer)) or upscale < 1:
            raise OptionError("upscale", upscale, "must be a whole number >= 1")
        if grayscale not in GRAY_MODES:
            raise OptionError("grayscale", grayscale, f"choose one of {', '.join(GRAY_MODES)}")
        if face_index is not None and any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0
                                          for i in face_index):
            raise OptionError("face_index", ",".join(map(str, face_index)), "face numbers are whole numbers from 0")
        if min_face_size is not None and not min_face_size > 0:
            raise OptionError("min_face_size", min_face_size, "must be a number of pixels > 0")
        if not reference_distance > 0:
            raise OptionError("reference_distance", reference_distance, "must be > 0")
        reference = self.reference_embedding(reference_face) if reference_face is not None else None
        selection = FaceSelection(only_center_face=only_center_face, largest_face=largest_face,
                                  face_index=tuple(int(i) for i in face_index) if face_index is not None else None,
                                  min_face_size=min_face_size, reference=reference,
                                  reference_distance=reference_distance)
        if measure_identity:
            self._face_embedder()
        return RestoreOptions(fidelity_weight=fidelity_weight, upscale=int(upscale), selection=selection,
                              grayscale=grayscale, draw_box=draw_box, measure_identity=measure_identity,
                              max_pixels=max_pixels)

    def _face_embedder(self) -> FaceEmbedder:
        """dlib's face-recognition network, loaded on first use (reference-person selection, identity distances)."""
        if self._embedder is None:
            from codeformer.face.identity import load_face_embedder

            self._embedder = load_face_embedder()
        return self._embedder

    def reference_embedding(self, image: ImageInput) -> np.ndarray:
        """(128,) identity embedding of the largest face in a photo of the person to restore."""
        if not self.whole_pictures:
            raise CodeFormerError(self._aligned_only_reason())
        assert self.detector is not None
        picture = as_picture(image)
        work, _scale = working_image(picture)
        faces = find_faces(work, self.detector, only_keep_largest=True)
        affine = estimate_alignment(faces[0].landmarks, alignment_template(self.restorer, self.detector.template_name)) \
            if faces else None
        if affine is None:
            name = str(image) if isinstance(image, (str, os.PathLike)) else "the reference picture"
            raise CodeFormerError(f"no face found in {name}: use a photo where the person's face is clearly visible")
        crop = warp_face(work, affine, self.restorer.input_size)
        return self._face_embedder().embed([crop])[0]

    def _models(self) -> Models:
        assert self.detector is not None
        return Models(self.restorer, self.detector, self.parser, self.bg_upsampler, self.face_upsampler,
                      batch_size=self.batch_size, embedder=self._embedder, progress=self.progress)

    def restore_pictures(self, pictures: Sequence[Picture], options: RestoreOptions) -> list[RestoreResult]:
        """Whole pictures: detect, align, restore (faces of all pictures batched), paste back."""
        if not self.whole_pictures:
            raise CodeFormerError(self._aligned_only_reason())
        return restore_pictures(pictures, self._models(), options)

    def _aligned_only_reason(self) -> str:
        if self.task != "restore":
            return f"{self.spec.name} works on aligned faces only: pass has_aligned=True"
        return "this pipeline was loaded without a face detector: pass has_aligned=True, or load it with one"

    def restore_aligned(self, pictures: Sequence[Picture], options: RestoreOptions, *,
                        names: Sequence[str] | None = None) -> list[RestoreResult]:
        """Aligned face crops (resized to the network's size if needed), each restored as the model's task says."""
        size = self.restorer.input_size
        labels = list(names) if names is not None else ["picture"] * len(pictures)
        # The reference warns about resizing for colorization, inpainting and reconstruction only.
        warn = self.task != "restore"
        crops = [prepare_aligned_face(p, name=label, warn_on_resize=warn, size=size) for p, label in zip(pictures, labels)]
        if self.task == "inpaint":
            masks = [paint_mask_of(p, size) for p in pictures]
            outputs = inpaint_aligned(self.restorer, crops, masks, batch_size=self.batch_size)
        elif self.task == "restore":
            outputs = restore_aligned(self.restorer, crops, fidelity_weight=options.fidelity_weight,
                                      gray=options.grayscale, batch_size=self.batch_size)
        else:
            outputs = self.restorer.restore(crops, batch_size=self.batch_size)
        frame = np.array([0.0, 0.0, size, size])
        return [RestoreResult(picture.with_alpha(out),
                              (RestoredFace(frame.copy(), self.restorer.template.copy(), 1.0, crop, out),))
                for picture, crop, out in zip(pictures, crops, outputs)]

    # -------------------------------------------------------------------------------------- video

    def restore_video(
        self,
        src: PathLike,
        dst: PathLike,
        *,
        options: RestoreOptions | None = None,
        temporal_smoothing: bool = True,
        fps: float | None = None,
        crf: int = 18,
        preset: str = "medium",
        progress: bool = True,
        on_frame: Callable[[int, RestoreResult], None] | None = None,
    ) -> VideoStats:
        """Restore the faces in every frame of ``src`` into the H.264 video ``dst`` (audio and timing kept).

        ``options``: from :meth:`options` (default: every face, the model's default weight, x2).
        ``temporal_smoothing``: faces are tracked across frames and their landmarks smoothed, so the
        restored faces hold still and a face the detector misses for a few frames stays restored;
        False restores every frame on its own. ``on_frame(index, result)`` sees each frame's result
        in order (``result.faces[i].number`` is the face's track).
        """
        from codeformer.video import transform_video

        processor = self.frame_processor(options, temporal_smoothing=temporal_smoothing, on_frame=on_frame)
        return transform_video(src, dst, processor, batch_frames=self.frames_per_step, fps=fps, crf=crf,
                               preset=preset, progress=progress)

    @property
    def frames_per_step(self) -> int:
        """Video frames handed to :meth:`frame_processor` at once: a batch on a GPU, one frame on a CPU.

        Batching frames pays on a GPU; on a CPU a face costs the same alone, and one frame at a time
        lets a progress bar move with every frame.
        """
        on_gpu = getattr(getattr(self.restorer, "device", None), "type", "cpu") != "cpu"
        return self.batch_size if on_gpu else 1

    def frame_processor(
        self,
        options: RestoreOptions | None = None,
        *,
        temporal_smoothing: bool = True,
        on_frame: Callable[[int, RestoreResult], None] | None = None,
    ) -> FrameProcessor:
        """What :meth:`restore_video` runs the frames of a video through, for callers that decode them.

        Give it consecutive BGR frames with ``process`` (it may hand them back later: the tracker
        looks ahead), then ``flush`` at the end; frames come back in order. Arguments as in
        :meth:`restore_video`.
        """
        from codeformer.face.temporal import TemporalFaceRestorer

        if not self.whole_pictures:
            raise CodeFormerError(self._aligned_only_reason())
        options = options if options is not None else self.options()
        if temporal_smoothing:
            return TemporalFaceRestorer(self._models(), options, on_frame=on_frame)
        return _FrameByFrame(self, options, on_frame)


class _FrameByFrame:
    """Each frame restored on its own, as a whole picture: a frame processor that holds nothing back."""

    def __init__(self, pipeline: Pipeline, options: RestoreOptions,
                 on_frame: Callable[[int, RestoreResult], None] | None) -> None:
        self._pipeline = pipeline
        self._options = options
        self._on_frame = on_frame
        self._next_index = 0

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        results = self._pipeline.restore_pictures([Picture(frame, None, 3) for frame in frames], self._options)
        for result in results:
            if self._on_frame is not None:
                self._on_frame(self._next_index, result)
            self._next_index += 1
        return [result.image for result in results]

    def flush(self) -> list[np.ndarray]:
        return []


def as_picture(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """A :class:`Picture` from an OpenCV-order array (BGR, BGRA, gray; uint8 or uint16) or a picture file."""
    if isinstance(image, Picture):
        return image
    if isinstance(image, np.ndarray):
        return picture_from_array(image, max_pixels=max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels=max_pixels)
    raise CodeFormerError(f"expected a numpy array or a path to a picture, got {type(image).__name__}")


def load_pipeline(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    detector: str | None = DEFAULT_DETECTOR,
    device: str = "auto",
    precision: str = "fp32",
    parse: bool = True,
    bg_upsampler: str | os.PathLike[str] | None = None,
    face_upsample: bool = False,
    weights_dir: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    compile: bool = False,
    bg_tile: int = DEFAULT_TILE,
    upsampler_half: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Pipeline:
    """Load the networks for ``model`` (a name from :func:`codeformer.available_models`, or a checkpoint file).

    - ``detector``: a name from :func:`codeformer.available_detectors`; ``None`` for aligned faces
      only (nothing for detection is loaded). Models that work on aligned faces only (colorization,
      inpainting, vqgan) load no detector, parser or upsampler.
    - ``device``: ``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda[:N]`` or ``mps``.
    - ``precision``: ``fp32`` (exact), ``bf16``, ``fp16`` or ``auto`` (see :mod:`codeformer.precision`).
    - ``parse``: blend faces with the ParseNet face mask (else the square soft mask alone).
    - ``bg_upsampler``: an upsampler name from :func:`codeformer.available_upsamplers` or a model file
      spandrel can load; ``face_upsample`` runs restored faces through it too (without a background
      upsampler it loads the default one for the faces only). ``bg_tile``: its tile side (0 = whole
      picture); ``upsampler_half``: None = fp16 on CUDA, False = always fp32.
    - ``weights_dir``: the weights root (default ``$CODEFORMER_WEIGHTS_DIR``, else ``./weights``);
      missing files are downloaded and checked on first use.
    - ``checkpoint``: a file to load for ``model`` instead of its registry file.
    - ``batch_size``: faces per network forward; None: 1 on the CPU (batches are no faster there
      and multiply the memory), 4 on GPUs.
    - ``progress``: show progress bars inside long steps (upsampler tiles).

    Unknown names, an unusable device or precision raise :class:`CodeFormerError` before anything
    is loaded or downloaded.
    """
    spec, model_file = _model_choice(model)
    if checkpoint is not None:
        model_file = Path(checkpoint).expanduser()
        if not model_file.is_file():
            raise CodeFormerError(f"checkpoint {model_file} does not exist")
    whole_pictures = spec.task == "restore" and detector is not None
    detector_spec = model_spec(detector, "detector") if detector is not None else None
    upsampler_choice = _upsampler_choice(bg_upsampler)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise OptionError("batch_size", batch_size, "must be a whole number >= 1")
    target = resolve_device(device)
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if target.type == "cpu" else GPU_BATCH_SIZE
    resolve_precision(precision, target)  # a precision the device cannot run fails before any download

    context = LoadContext(device=target, weights_dir=weights_dir, precision=precision, compile=compile,
                          tile=bg_tile, half=upsampler_half)
    bg, faces_up = None, None
    if whole_pictures and (upsampler_choice is not None or face_upsample):
        # The user's own upsampler file first: the likeliest to be wrong, and cheap to check.
        choice = upsampler_choice if upsampler_choice is not None else DEFAULT_UPSAMPLER
        if isinstance(choice, Path):
            upsampler = model_spec(DEFAULT_UPSAMPLER, "upsampler").load(
                LoadContext(device=target, weights_dir=weights_dir, checkpoint=choice, tile=bg_tile,
                            half=upsampler_half))
        else:
            upsampler = model_spec(choice, "upsampler").load(context)
        bg = upsampler if upsampler_choice is not None else None
        faces_up = upsampler if face_upsample else None
    restorer = spec.load(LoadContext(device=target, weights_dir=weights_dir, checkpoint=model_file,
                                     precision=precision, compile=compile))
    face_detector = detector_spec.load(context) if whole_pictures and detector_spec is not None else None
    parser = model_spec(DEFAULT_PARSER, "parser").load(context) if whole_pictures and parse else None
    pipeline = Pipeline(spec, restorer, detector=face_detector, parser=parser, bg_upsampler=bg,
                        face_upsampler=faces_up, batch_size=batch_size, progress=progress)
    logger.info("loaded %s", pipeline.describe())
    return pipeline
