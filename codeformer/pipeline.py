"""The front door: :func:`load_pipeline` loads every network a job needs, :class:`Pipeline` runs it.

Example::

    import codeformer
    pipe = codeformer.load_pipeline("codeformer", detector="retinaface_resnet50")
    result = pipe.restore("photo.jpg", fidelity_weight=0.5, upscale=2)
    result.image          # (H * 2, W * 2[, C]) in the input's dtype and channel order
    result.faces[0].box   # where the first restored face is, in the input's pixels

What to load is a :class:`~codeformer.options.LoadOptions` and what to do with a picture a
:class:`~codeformer.options.RestoreOptions` (or the same values as keywords): both are checked
when made, so a typo costs nothing. Whole pictures go through :mod:`codeformer.restoration`
(detect, align, restore, parse, paste back); aligned faces (``has_aligned=True``) go straight to
the restorer, and the colorization, inpainting and VQGAN models work on aligned faces only, as in
the reference.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

import numpy as np

from codeformer.aligned import inpaint_aligned, paint_mask_of, prepare_aligned_face, restore_aligned_crops
from codeformer.device import resolve_device
from codeformer.errors import CodeFormerError
from codeformer.face.alignment import estimate_alignment, warp_face
from codeformer.face.detection import find_faces
from codeformer.face.detection_process import DEFAULT_PROCESSES, DetectionProcess, runs_apart
from codeformer.fidelity import NoFidelityControlError
from codeformer.imageio import DEFAULT_MAX_PIXELS, Picture, picture_from_array, read_image
from codeformer.options import LoadOptions, ReferenceFace, RestoreOptions, VideoOptions, with_keywords
from codeformer.precision import resolve_precision
from codeformer.registry import (
    DEFAULT_PARSER,
    DEFAULT_UPSAMPLER,
    LoadContext,
    ModelSpec,
    checkpoint_spec,
    model_spec,
    names,
)
from codeformer.restoration import (
    FacePlan,
    Models,
    RestoredFace,
    RestoreResult,
    alignment_template,
    blend_faces,
    plan_faces,
    restore_plans,
    restore_whole_pictures,
    working_image,
)
from codeformer.restorer import Restorer
from codeformer.weights import ensure_weights

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


class Pipeline:
    """Loaded networks and the settings they were loaded with; call :meth:`restore` on pictures.

    Build it with :func:`load_pipeline`. The networks are reused across calls; a pipeline is not
    meant to be called from several threads at once (serialise calls, as the web app's queue does).
    """

    def __init__(self, spec: ModelSpec, restorer: Restorer, *, detector: FaceDetector | None = None,
                 parser: FaceParser | None = None, bg_upsampler: Upsampler | None = None,
                 face_upsampler: Upsampler | None = None, batch_size: int = CPU_BATCH_SIZE,
                 progress: bool = False, load_options: LoadOptions | None = None) -> None:
        self.spec = spec
        self.load_options = load_options  # what it was loaded with (None: assembled by hand)
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

    def restore(self, image: ImageInput, options: RestoreOptions | None = None, *, has_aligned: bool = False,
                **keywords: Any) -> RestoreResult:
        """Restore the faces of one picture (a numpy array in OpenCV order, or a path).

        ``options`` (:class:`~codeformer.options.RestoreOptions`), or its fields as keywords
        (``fidelity_weight``, ``upscale``, ``only_center_face``, ``largest_face``, ``face_index``,
        ``min_face_size``, ``reference_face``, ``reference_distance``, ``draw_box``, ``grayscale``,
        ``measure_identity``, ``max_pixels``), keywords replacing the object's values. Faces not
        chosen stay exactly as in the upscaled picture and are listed in ``result.skipped``.
        ``has_aligned``: the picture is one aligned face crop. The input is never modified.
        """
        options = self.prepare(with_keywords(options, RestoreOptions, keywords))
        picture = as_picture(image, max_pixels=options.max_pixels)
        if has_aligned:
            return self.restore_aligned([picture], options)[0]
        return self.restore_pictures([picture], options)[0]

    def prepare(self, options: RestoreOptions | None = None) -> RestoreOptions:
        """``options`` made ready for this pipeline: checked against its model, the reference face embedded.

        Jobs call it once and hand the result to every picture, so a reference photo is read and
        embedded once; calling it again on its own result does nothing more.
        """
        options = options if options is not None else RestoreOptions()
        if options.fidelity_weight is not None and not self.restorer.supports_fidelity:
            raise NoFidelityControlError(self.restorer.name, options.fidelity_weight)
        if options.needs_reference:
            reference = options.reference_face
            source = str(reference) if isinstance(reference, (str, os.PathLike)) else "the reference picture"
            options = replace(options, reference_face=ReferenceFace(self.reference_embedding(reference), source))
        if options.measure_identity:
            self._face_embedder()
        return options

    def options(self, **keywords: Any) -> RestoreOptions:
        """:class:`~codeformer.options.RestoreOptions` from keywords, prepared (see :meth:`prepare`)."""
        return self.prepare(RestoreOptions(**keywords))

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

    def restore_pictures(self, pictures: Sequence[Picture], options: RestoreOptions | None = None) -> list[RestoreResult]:
        """Whole pictures: detect, align, restore (faces of all pictures batched), paste back."""
        if not self.whole_pictures:
            raise CodeFormerError(self._aligned_only_reason())
        return restore_whole_pictures(pictures, self._models(), self.prepare(options))

    def plan_picture(self, picture: Picture, options: RestoreOptions) -> FacePlan:
        """The first half of :meth:`restore_pictures` for one picture: its faces detected, aligned and chosen.

        ``options`` prepared (:meth:`prepare`). A job plans the next picture (in another thread) while
        :meth:`restore_planned` finishes the current one; together they give what
        :meth:`restore_pictures` gives.
        """
        if not self.whole_pictures:
            raise CodeFormerError(self._aligned_only_reason())
        return plan_faces(picture, self._models(), options)

    def restore_planned(self, pictures: Sequence[Picture], plans: Sequence[FacePlan],
                        options: RestoreOptions) -> list[RestoreResult]:
        """The second half of :meth:`restore_pictures`: planned faces restored and pasted back."""
        return restore_plans(pictures, plans, self._models(), options)

    @contextlib.contextmanager
    def detecting_apart(self, pictures: int | None = None) -> Iterator[int]:
        """Within the block, a detector that takes one core and holds the GIL (dlib) runs in processes of
        its own (:mod:`codeformer.face.detection_process`), so that pictures planned in other threads are
        detected while this process restores; yields how many pictures it detects at once (0: it stays
        here, as other detectors do). ``pictures``: how many the job has, if known (no more processes).
        """
        detector = self.detector
        if not runs_apart(detector):
            yield 0
            return
        assert detector is not None
        processes = min(DEFAULT_PROCESSES, os.cpu_count() or 1, pictures or DEFAULT_PROCESSES)
        with DetectionProcess(detector, processes=processes) as apart:
            self.detector = apart
            try:
                yield apart.processes
            finally:
                self.detector = detector

    def _aligned_only_reason(self) -> str:
        if self.task != "restore":
            return f"{self.spec.name} works on aligned faces only: pass has_aligned=True"
        return "this pipeline was loaded without a face detector: pass has_aligned=True, or load it with one"

    def restore_aligned(self, pictures: Sequence[Picture], options: RestoreOptions | None = None, *,
                        names: Sequence[str] | None = None) -> list[RestoreResult]:
        """Aligned face crops (resized to the network's size if needed), each restored as the model's task says."""
        options = self.prepare(options)
        size = self.restorer.input_size
        labels = list(names) if names is not None else ["picture"] * len(pictures)
        # The reference warns about resizing for colorization, inpainting and reconstruction only.
        warn = self.task != "restore"
        crops = [prepare_aligned_face(p, name=label, warn_on_resize=warn, size=size) for p, label in zip(pictures, labels)]
        if self.task == "inpaint":
            masks = [paint_mask_of(p, size) for p in pictures]
            outputs = inpaint_aligned(self.restorer, crops, masks, batch_size=self.batch_size)
        elif self.task == "restore":
            outputs = blend_faces(restore_aligned_crops(self.restorer, crops, fidelity_weight=options.fidelity_weight,
                                                        gray=options.grayscale, batch_size=self.batch_size),
                                  crops, options.blend)
        else:
            outputs = self.restorer.restore_crops(crops, batch_size=self.batch_size)
        frame = np.array([0.0, 0.0, size, size])
        return [RestoreResult(picture.with_alpha(out),
                              (RestoredFace(frame.copy(), self.restorer.template.copy(), 1.0, crop, out,
                                            blend=options.blend if self.task == "restore" else 1.0),))
                for picture, crop, out in zip(pictures, crops, outputs)]

    # -------------------------------------------------------------------------------------- video

    def restore_video(
        self,
        src: PathLike,
        dst: PathLike,
        options: RestoreOptions | None = None,
        *,
        video: VideoOptions | None = None,
        progress: bool = True,
        on_frame: Callable[[int, RestoreResult], None] | None = None,
        **video_keywords: Any,
    ) -> VideoStats:
        """Restore the faces in every frame of ``src`` into the H.264 video ``dst`` (audio and timing kept).

        ``options``: what to do with each frame's faces (default: every face, the model's default
        weight, x2). ``video`` (:class:`~codeformer.options.VideoOptions`), or its fields as keywords
        (``temporal_smoothing``, ``fps``, ``crf``, ``preset``): with ``temporal_smoothing`` (the
        default) faces are tracked across frames and their landmarks smoothed, so the restored
        faces hold still and a face the detector misses for a few frames stays restored.
        ``on_frame(index, result)`` sees each frame's result in order (``result.faces[i].number``
        is the face's track).
        """
        from codeformer.video import transform_video

        video = with_keywords(video, VideoOptions, video_keywords)
        # dlib in processes of its own: the next frames are detected while these are restored.
        with self.detecting_apart() as apart:
            processor = self.frame_processor(options, temporal_smoothing=video.temporal_smoothing, on_frame=on_frame,
                                             detect_ahead=apart)
            return transform_video(src, dst, processor, batch_frames=self.frames_per_step, fps=video.fps,
                                   crf=video.crf, preset=video.preset, progress=progress)

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
        detect_ahead: int = 0,
    ) -> FrameProcessor:
        """What :meth:`restore_video` runs the frames of a video through, for callers that decode them.

        Give it consecutive BGR frames with ``process`` (it may hand them back later: the tracker
        looks ahead), then ``flush`` at the end; frames come back in order. Arguments as in
        :meth:`restore_video`; ``detect_ahead`` (tracked faces): the frames of that many calls are detected
        at once in helper threads while the earlier ones are restored, worth it with the detector in
        processes of its own (within :meth:`detecting_apart`, which says how many).
        """
        from codeformer.temporal import TemporalFaceRestorer

        if not self.whole_pictures:
            raise CodeFormerError(self._aligned_only_reason())
        options = self.prepare(options)
        if temporal_smoothing:
            return TemporalFaceRestorer(self._models(), options, on_frame=on_frame, detect_ahead=detect_ahead)
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


def load_pipeline(model: PathLike | LoadOptions = "codeformer", **keywords: Any) -> Pipeline:
    """Load the networks a job needs: ``load_pipeline(LoadOptions(...))`` or the same values as keywords.

    ``model``: a name from :func:`codeformer.available_models` or a checkpoint file (or a whole
    :class:`~codeformer.options.LoadOptions`, keywords replacing its values). The keywords are
    LoadOptions' fields: ``detector`` (None: aligned faces only), ``device``, ``precision``,
    ``parse``, ``bg_upsampler``, ``face_upsample``, ``bg_tile``, ``upsampler_half``,
    ``weights_dir``, ``batch_size``, ``compile``, ``checkpoint``, ``progress``. Models that work on
    aligned faces only (colorization, inpainting, vqgan) load no detector, parser or upsampler.

    Unknown names and invalid values raise :class:`CodeFormerError` before anything is loaded or
    downloaded; so does a device or precision this machine cannot run.
    """
    if isinstance(model, LoadOptions):
        options = with_keywords(model, LoadOptions, keywords)
    else:
        options = with_keywords(None, LoadOptions, {"model": model, **keywords})
    spec = options.spec
    model_file = Path(options.checkpoint).expanduser() if options.checkpoint is not None else None
    if spec is None:
        model_file = Path(options.model).expanduser()
        spec = checkpoint_spec(model_file)
    target = resolve_device(options.device)
    batch_size = options.batch_size or (CPU_BATCH_SIZE if target.type == "cpu" else GPU_BATCH_SIZE)
    resolve_precision(options.precision, target)  # a precision the device cannot run fails before any download

    context = LoadContext(device=target, weights_dir=options.weights_dir, precision=options.precision,
                          compile=options.compile, tile=options.bg_tile, half=options.upsampler_half,
                          template=options.template)
    # What to load, decided before anything is: every file the job needs is fetched (or all the
    # missing ones listed) first, so a machine without internet hears of all of them at once.
    whole_pictures = options.whole_pictures
    upsampler_choice = options.bg_upsampler if options.bg_upsampler is not None else DEFAULT_UPSAMPLER
    upsampler_file = None if isinstance(upsampler_choice, str) and upsampler_choice in names("upsampler") \
        else Path(upsampler_choice).expanduser()
    upsampler_spec = model_spec(upsampler_choice if upsampler_file is None else DEFAULT_UPSAMPLER, "upsampler") \
        if whole_pictures and (options.bg_upsampler is not None or options.face_upsample) else None
    detector_spec = model_spec(options.detector, "detector") if whole_pictures and options.detector else None
    parser_spec = model_spec(DEFAULT_PARSER, "parser") if whole_pictures and options.parse else None
    needed = [*([] if model_file else spec.weights), *(detector_spec.weights if detector_spec else ()),
              *(parser_spec.weights if parser_spec else ()),
              *(upsampler_spec.weights if upsampler_spec and upsampler_file is None else ())]
    ensure_weights(needed, options.weights_dir, progress=options.progress)

    bg, faces_up = None, None
    if upsampler_spec is not None:
        # The user's own upsampler file first: the likeliest to be wrong, and cheap to check.
        upsampler = upsampler_spec.load(replace(context, checkpoint=upsampler_file))
        bg = upsampler if options.bg_upsampler is not None else None
        faces_up = upsampler if options.face_upsample else None
    restorer = spec.load(replace(context, checkpoint=model_file))
    detector = detector_spec.load(context) if detector_spec is not None else None
    parser = parser_spec.load(context) if parser_spec is not None else None
    pipeline = Pipeline(spec, restorer, detector=detector, parser=parser, bg_upsampler=bg,
                        face_upsampler=faces_up, batch_size=batch_size, progress=options.progress,
                        load_options=options)
    logger.info("loaded %s", pipeline.describe())
    return pipeline
