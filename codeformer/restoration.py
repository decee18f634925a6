"""Whole-picture restoration as small stages: plan, restore, compose.

1. :func:`plan_faces` detects faces, aligns each onto the restorer's template (the reference's
   ``read_image`` + ``get_face_landmarks_5`` + ``align_warp_face``) and chooses which to restore
   (:mod:`codeformer.face.selection`); :func:`plan_detected` does the same for faces found elsewhere
   (a video's tracked, smoothed faces);
2. the crops of any number of plans go through the :class:`~codeformer.restorer.Restorer` together,
   so faces from several pictures (or video frames) share one network forward;
3. :func:`compose` upscales the picture (resize or background upsampler), parses the restored faces
   and pastes them back (the reference's ``paste_faces_to_input_image``).

:func:`restore_whole_pictures` chains the three. The output is exactly the input size times ``upscale``, in
the input's dtype, with its alpha channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from codeformer.color import GrayMode, is_gray, to_gray
from codeformer.face.alignment import FACE_SIZE, FFHQ_TEMPLATE_5, TEMPLATES, estimate_alignment, transform_points, warp_face
from codeformer.face.detection import DetectedFace, FaceDetector, detection_size, find_faces
from codeformer.face.pasteback import PARSE_SIZE, PASTE_BAND_PIXELS, PastedFace, paste_faces
from codeformer.face.selection import choose_faces, left_to_right_numbers
from codeformer.imageio import (
    RELEASE_AFTER_BYTES,
    MemoryLimitError,
    Picture,
    check_output_pixels,
    release_free_memory,
    short_of_memory,
)
from codeformer.options import RestoreOptions
from codeformer.progress import Progress

if TYPE_CHECKING:
    from codeformer.face.identity import FaceEmbedder
    from codeformer.face.parsing import FaceParser
    from codeformer.restorer import Restorer
    from codeformer.upsampler import Upsampler

logger = logging.getLogger(__name__)

# The reference upsamples pictures whose short side is below this before detecting and aligning:
# small faces are found more reliably and the 512 px crops are not blown up from a few pixels.
WORK_MIN_SIDE = 512
# Eye distance (px, on the working image) below which a detection is a side view or too small.
EYE_DIST_THRESHOLD = 5.0

# What a whole-picture restoration takes beyond the loaded networks and the decoded picture, for
# :func:`memory_needed` (measured on a CPU, glibc, numpy 2, OpenCV 5; see benchmarks/bench_memory.py):
# bytes per pixel a detector's network takes, per pixel it processes, unless the detector says
# (``memory_per_pixel``; dlib: 1024): RetinaFace ResNet-50 takes about 230, YOLOv5 130.
DETECTOR_BYTES_PER_PIXEL = 256
# color.is_gray on the working picture (grayscale "auto"): it works a band of rows at a time, so
# its int64 temporaries do not grow with the picture.
GRAY_CHECK_BYTES = 64 << 20
# Paste-back: a band's float64 buffer and one face's layers, per canvas pixel (see face.pasteback).
PASTE_BYTES_PER_PIXEL = 64
# The networks' activations (a batch of faces through the restorer and the parser, an upsampler's
# tile) and what else does not grow with the picture.
NETWORK_WORK_BYTES = 1 << 30


@dataclass
class Models:
    """The networks a whole-picture restoration uses; the optional ones may be None.

    Without a parser, faces are blended with the square soft mask alone.
    """

    restorer: Restorer
    detector: FaceDetector
    parser: FaceParser | None = None
    bg_upsampler: Upsampler | None = None
    face_upsampler: Upsampler | None = None
    batch_size: int = 4  # faces per network forward
    embedder: FaceEmbedder | None = None  # identity embeddings: reference-person selection, identity distances
    progress: bool = False  # progress bars inside long steps (upsampler tiles, the faces of a picture)


@dataclass(frozen=True, eq=False)
class RestoredFace:
    """One restored face of a picture. Coordinates are in the input picture's pixels."""

    box: np.ndarray  # (4,) float64: x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2) float64, in the detector's landmark order
    score: float  # the detector's confidence
    aligned: np.ndarray  # (S, S, 3) BGR uint8: the aligned crop that went into the network
    restored: np.ndarray  # (S, S, 3) BGR uint8: what came out (made gray for gray pictures)
    number: int = 0  # left to right in a picture (from 0), its track in a video
    identity_distance: float | None = None  # embedding distance aligned -> restored, when measured
    detected: bool = True  # False: filled in from the neighbouring frames of its track (video)
    blend: float = 1.0  # how much of the restored face ``restored`` holds (the rest: the unrestored crop)
    reference_distance: float | None = None  # identity distance to the reference person, when one is given


@dataclass(frozen=True, eq=False)
class SkippedFace:
    """A face that was found but not restored. Coordinates are in the input picture's pixels."""

    box: np.ndarray  # (4,) float64
    landmarks: np.ndarray  # (5, 2) float64
    score: float
    number: int
    reason: str  # e.g. "not the largest face", "smaller than 40 px (31 px)"
    reference_distance: float | None = None  # identity distance to the reference person, when one is given


@dataclass(frozen=True)
class FacePlan:
    """Faces found in one picture, aligned and cropped, ready for the restorer."""

    work_image: np.ndarray  # (h, w, 3) BGR uint8: the picture as detected on (short side >= 512)
    work_scale: float  # work_image size / picture size (1 unless the picture was small)
    faces: tuple[DetectedFace, ...]  # the faces to restore, in the detector's order, coordinates on work_image
    numbers: tuple[int, ...]  # each face's number: left to right in a picture, its track in a video
    affines: tuple[np.ndarray, ...]  # (2, 3) each: work_image -> S x S crop
    crops: tuple[np.ndarray, ...]  # (S, S, 3) BGR uint8 each, S = the restorer's input size
    gray: bool  # restored faces are to be made gray (detected or forced)
    skipped: tuple[SkippedFace, ...] = ()  # faces found but not restored, and why
    reference_distances: tuple[float | None, ...] = ()  # per face to restore, when a reference person is given


@dataclass(frozen=True)
class RestoreResult:
    """A restored picture and its faces.

    ``image``: OpenCV channel order (BGR, BGRA or gray), the input's dtype; a whole picture comes back
    exactly at input size x upscale, an aligned face as the restored crop, with the input's alpha.
    ``faces``: one :class:`RestoredFace` per restored face (an aligned input: the one crop, with the
    crop's frame as its box and the template as its landmarks).
    """

    image: np.ndarray
    faces: tuple[RestoredFace, ...]
    skipped: tuple[SkippedFace, ...] = ()  # faces found but not restored (by the selection), and why

    @property
    def cropped_faces(self) -> tuple[np.ndarray, ...]:
        return tuple(face.aligned for face in self.faces)

    @property
    def restored_faces(self) -> tuple[np.ndarray, ...]:
        return tuple(face.restored for face in self.faces)


def working_image(picture: Picture) -> tuple[np.ndarray, float]:
    """The 8-bit picture the reference detects on, and its scale: short side raised to 512 if below."""
    image = picture.bgr8()
    short_side = min(image.shape[:2])
    if short_side >= WORK_MIN_SIDE:
        return image, 1.0
    factor = WORK_MIN_SIDE / short_side
    return cv2.resize(image, (0, 0), fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR), factor


def alignment_template(restorer: Restorer, landmark_order: str) -> np.ndarray:
    """Where a detector's 5 landmarks go in the restorer's crops: (5, 2) float64.

    FFHQ-order landmarks take the restorer's own template. Other orders (dlib's eye corners) have a
    512 template for FFHQ crops: scaled to the restorer's input size when its crops are FFHQ crops,
    else carried into its crops by the similarity that maps the FFHQ template onto the restorer's
    (GPEN's crops frame the face more tightly).
    """
    if landmark_order == "ffhq":
        return restorer.template
    scale = restorer.input_size / FACE_SIZE
    if np.allclose(restorer.template, FFHQ_TEMPLATE_5 * scale):
        return TEMPLATES[landmark_order] * scale
    ffhq_to_restorer = estimate_alignment(FFHQ_TEMPLATE_5, restorer.template)
    assert ffhq_to_restorer is not None  # two templates of the same face: never degenerate
    return transform_points(ffhq_to_restorer, TEMPLATES[landmark_order])


def plan_faces(picture: Picture, models: Models, options: RestoreOptions) -> FacePlan:
    """Detect the faces of one picture, align them onto the restorer's template and choose which to restore."""
    check_output_pixels(picture.width, picture.height, options.upscale, options.max_pixels)  # before any work
    check_picture_memory(picture, models, options)
    image, scale = working_image(picture)
    faces = find_faces(image, models.detector, eye_dist_threshold=EYE_DIST_THRESHOLD)
    if _detection_memory(image.shape[1], image.shape[0], models.detector) >= RELEASE_AFTER_BYTES:
        release_free_memory()  # the detector's work (dlib's pyramid: up to 2 GB), freed but kept by the allocator
    numbers = left_to_right_numbers(np.array([face.box for face in faces]).reshape(-1, 4))
    return plan_detected(picture, image, scale, faces, numbers, models, options)


def check_picture_memory(picture: Picture, models: Models, options: RestoreOptions) -> None:
    """Refuse, before any work, a picture whose restoration would not fit in the memory available.

    Raises :class:`~codeformer.imageio.MemoryLimitError`, which says about how large a picture fits.
    """
    needed = _picture_memory(picture, picture.width, picture.height, models, options)
    available = short_of_memory(needed)
    if available is None:
        return
    scale = options.upscale
    fits = _pixels_that_fit(picture, models, options, available) / 1e6
    if scale > 1:
        remedy = f"use a smaller upscale (about {fits:.0f} megapixels out fit at this one), or free memory"
    else:
        remedy = f"downscale it to about {fits:.0f} megapixels, or free memory"
    raise MemoryLimitError("restoring", picture.width, picture.height, needed, available, remedy,
                           detail=f" at upscale {scale}" if scale > 1 else "")


def memory_needed(width: int, height: int, models: Models, options: RestoreOptions, *, alpha: bool = False,
                  sixteen_bit: bool = False, gray_source: bool = False) -> int:
    """Bytes the restoration of a ``width`` x ``height`` picture takes at its peak (an estimate), beyond
    the loaded networks and the decoded picture: the largest of its stages.

    - plan: the 8-bit working copy (16-bit or small pictures), the detector's copy and its network
      (:func:`codeformer.face.detection.detection_size`: within the detection budget), the gray check;
    - restore: the networks' activations;
    - compose: the canvas at the output size (BGR or BGRA, 8 or 16 bits; the network's own scale
      first with a background upsampler that has another), its alpha, the parser, a paste-back band;
    - save: the finished picture and its encoded file (as big as the pixels, at worst).
    """
    sample = 2 if sixteen_bit else 1
    channels = 4 if alpha else 3
    work_width, work_height = width, height
    if min(width, height) < WORK_MIN_SIDE:
        factor = WORK_MIN_SIDE / min(width, height)
        work_width, work_height = round(width * factor), round(height * factor)
    work_pixels = work_width * work_height
    work_copy = 3 * work_pixels if (sixteen_bit or work_pixels != width * height) else 0
    detect = _detection_memory(work_width, work_height, models.detector)
    gray = GRAY_CHECK_BYTES if options.grayscale == "auto" else 0
    plan = work_copy + max(detect, gray)
    out_pixels = width * options.upscale * height * options.upscale
    canvas = out_pixels * channels * sample
    extra = width * height * channels * sample if alpha else 0  # the picture with its alpha, before resizing
    upsampler = models.bg_upsampler
    if upsampler is not None and getattr(upsampler, "scale", options.upscale) != options.upscale:
        extra += width * height * upsampler.scale**2 * 3 * sample  # the network's output, before resizing
    paste = PASTE_BYTES_PER_PIXEL * min(out_pixels, PASTE_BAND_PIXELS)
    # The parser (and a face upsampler) run with the canvas there, then the faces are pasted: what
    # they freed is not always where paste-back's buffers go, so both count.
    compose = work_copy + canvas + max(extra, NETWORK_WORK_BYTES + paste) + (out_pixels * sample if gray_source else 0)
    save = 2 * canvas
    return max(plan, NETWORK_WORK_BYTES + work_copy, compose, save)


def _detection_memory(width: int, height: int, detector: FaceDetector) -> int:
    """Bytes the detector's copy of a ``width`` x ``height`` working picture and its network take."""
    (copy_width, copy_height), _ = detection_size(height, width, detector)
    processed = copy_width * copy_height * getattr(detector, "area_factor", 1)
    return 3 * copy_width * copy_height + processed * getattr(detector, "memory_per_pixel", DETECTOR_BYTES_PER_PIXEL)


def _picture_memory(picture: Picture, width: int, height: int, models: Models, options: RestoreOptions) -> int:
    """:func:`memory_needed` for ``picture``'s kind (alpha, depth, gray) at ``width`` x ``height``."""
    return memory_needed(width, height, models, options, alpha=picture.alpha is not None,
                         sixteen_bit=picture.is_16bit, gray_source=picture.source_channels == 1)


def _pixels_that_fit(picture: Picture, models: Models, options: RestoreOptions, available: int) -> int:
    """About how many output pixels a picture of this one's shape and kind may have to fit in ``available`` bytes."""
    low, high = 0.0, 1.0  # a factor on both sides
    for _ in range(20):
        middle = (low + high) / 2
        width, height = max(1, int(picture.width * middle)), max(1, int(picture.height * middle))
        low, high = (middle, high) if _picture_memory(picture, width, height, models, options) <= available \
            else (low, middle)
    return int(picture.width * low) * int(picture.height * low) * options.upscale**2


# (face numbers, their distances to the reference person) -> the distances to choose by (a video: per track)
ChoiceDistances = Callable[[Sequence[int], Sequence[float]], Sequence[float]]


def plan_detected(
    picture: Picture,
    image: np.ndarray,
    scale: float,
    faces: Sequence[DetectedFace],
    numbers: Sequence[int],
    models: Models,
    options: RestoreOptions,
    choice_distances: ChoiceDistances | None = None,
) -> FacePlan:
    """Align faces found on the working ``image`` (picture x ``scale``) and choose which to restore.

    ``choice_distances``: turns each face's distance to the reference person into the one it is
    chosen by (a video passes its tracks' distances); the face's own distance is what is reported.
    """
    gray = options.grayscale == "on" or (options.grayscale == "auto" and is_gray(image))
    template = alignment_template(models.restorer, models.detector.template_name)
    size = models.restorer.input_size
    aligned, skipped = [], []
    for face, number in zip(faces, numbers):
        affine = estimate_alignment(face.landmarks, template)
        if affine is None:  # degenerate landmarks: nothing sensible to crop
            skipped.append(_skipped(face, scale, number, "degenerate landmarks"))
            continue
        aligned.append((face, number, affine, warp_face(image, affine, size)))
    selection = options.selection
    distances = None
    if selection.reference is not None and aligned:
        from codeformer.face.identity import identity_distance

        embedder = _embedder(models)
        distances = identity_distance(embedder.embed([crop for *_, crop in aligned]), selection.reference).tolist()
    boxes = np.array([face.box / scale for face, *_ in aligned]).reshape(-1, 4)
    aligned_numbers = [number for _, number, *_ in aligned]
    by = choice_distances(aligned_numbers, distances) if choice_distances is not None and distances else distances
    reasons = choose_faces(boxes, numbers=aligned_numbers, height=picture.height, width=picture.width,
                           selection=selection, distances=by)
    own = distances if distances is not None else [None] * len(aligned)
    chosen = [(entry, distance) for entry, reason, distance in zip(aligned, reasons, own) if reason is None]
    skipped += [_skipped(face, scale, number, reason, distance)
                for (face, number, *_), reason, distance in zip(aligned, reasons, own) if reason is not None]
    return FacePlan(image, scale, tuple(face for (face, *_), _ in chosen), tuple(number for (_, number, *_), _ in chosen),
                    tuple(affine for (_, _, affine, _), _ in chosen), tuple(crop for (*_, crop), _ in chosen), gray,
                    tuple(skipped), tuple(distance for _, distance in chosen))


def _embedder(models: Models) -> FaceEmbedder:
    if models.embedder is None:
        raise ValueError("comparing faces needs Models.embedder (codeformer.face.identity.load_face_embedder())")
    return models.embedder


def _skipped(face: DetectedFace, scale: float, number: int, reason: str,
             reference_distance: float | None = None) -> SkippedFace:
    return SkippedFace(face.box / scale, face.landmarks / scale, face.score, number, reason, reference_distance)


def blend_faces(restored: Sequence[np.ndarray], crops: Sequence[np.ndarray], blend: float) -> list[np.ndarray]:
    """``blend`` of each restored face mixed with the rest of its unrestored crop (1: the restored face as is)."""
    if blend >= 1.0:
        return list(restored)
    return [np.clip(np.rint(blend * face.astype(np.float32) + (1.0 - blend) * crop.astype(np.float32)), 0,
                    255).astype(np.uint8) for face, crop in zip(restored, crops)]


def finish_restored(plan: FacePlan, restored: Sequence[np.ndarray], blend: float = 1.0) -> list[np.ndarray]:
    """Restored faces as they are pasted: made gray, toned like their crops, for gray pictures; blended."""
    faces = [to_gray(face, crop) for face, crop in zip(restored, plan.crops)] if plan.gray else list(restored)
    return blend_faces(faces, plan.crops, blend)


def _canvas(picture: Picture, size: tuple[int, int], bg_upsampler: Upsampler | None, upscale: int,
            progress: bool = False) -> np.ndarray:
    """The picture (with alpha) upscaled to ``size`` = (width, height): resized, or through the upsampler.

    Always a new array (the caller pastes into it), never more than one full-size one at a time.
    """
    source = picture.with_alpha(picture.bgr)  # a new array when there is alpha
    if bg_upsampler is None:
        if size == (picture.width, picture.height):  # upscale 1: what cv2.resize would copy
            return source.copy() if source is picture.bgr else source
        return cv2.resize(source, size, interpolation=cv2.INTER_LINEAR)
    upscaled = bg_upsampler.upscale(source, outscale=upscale, progress=progress)
    if (upscaled.shape[1], upscaled.shape[0]) != size:
        upscaled = cv2.resize(upscaled, size, interpolation=cv2.INTER_LANCZOS4)
    return upscaled


def compose(
    picture: Picture,
    plan: FacePlan,
    restored: Sequence[np.ndarray],
    *,
    upscale: int,
    parser: FaceParser | None = None,
    bg_upsampler: Upsampler | None = None,
    face_upsampler: Upsampler | None = None,
    draw_box: bool = False,
    batch_size: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """Paste restored faces into the upscaled picture; exactly (H * upscale, W * upscale), input dtype.

    The canvas is built once, at the output size: faces found on an enlarged working copy of a small
    picture are pasted through their alignment composed with that enlargement, so a large ``upscale``
    on a tiny picture never builds a canvas larger than the output.
    """
    canvas = _canvas(picture, (picture.width * upscale, picture.height * upscale), bg_upsampler, upscale, progress)
    affines = [picture_alignment(affine, plan.work_scale) for affine in plan.affines]
    if restored:
        faces = list(restored)
        crop_size = faces[0].shape[0]
        if face_upsampler is not None:
            faces = [face_upsampler.upscale(face, outscale=upscale) for face in faces]
        masks: list[np.ndarray | None] = [None] * len(faces)
        if parser is not None:
            # The reference parses each pasted face brought back to ParseNet's 512 px.
            to_parse = [face if face.shape[0] == PARSE_SIZE else
                        cv2.resize(face, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR) for face in faces]
            masks = list(parser.masks(to_parse, batch_size=batch_size))
        pasted = [PastedFace(face, affine, parse_mask=mask, crop_size=crop_size)
                  for face, affine, mask in zip(faces, affines, masks)]
        canvas = paste_faces(canvas, pasted, upscale=upscale, draw_box=draw_box, in_place=True)  # canvas is ours
    if picture.source_channels == 1 and plan.gray:
        canvas = np.ascontiguousarray(canvas[:, :, 0])  # gray in, gray out: the three channels are equal
    if canvas.nbytes >= RELEASE_AFTER_BYTES:
        release_free_memory()  # the networks' and paste-back's work, freed: the encoder will want room
    return canvas


def picture_alignment(affine: np.ndarray, work_scale: float) -> np.ndarray:
    """An alignment found on the working copy (picture resized by ``work_scale``), as one from the picture.

    ``cv2.resize`` by a factor ``f`` puts picture pixel ``x`` at ``f * (x + 0.5) - 0.5`` on the copy;
    the returned (2, 3) affine is the working alignment after that map.
    """
    if work_scale == 1.0:
        return affine
    offset = 0.5 * work_scale - 0.5
    linear = affine[:, :2] * work_scale  # (2, 2)
    translation = affine[:, :2] @ np.array([offset, offset]) + affine[:, 2]
    return np.hstack([linear, translation[:, None]])


def _in_picture(face: DetectedFace, work_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A face's box and landmarks mapped from the working image back to the picture's pixels."""
    return face.box / work_scale, face.landmarks / work_scale


def restore_whole_pictures(pictures: Sequence[Picture], models: Models, options: RestoreOptions) -> list[RestoreResult]:
    """Restore the (chosen) faces of several pictures, faces of all pictures batched through the network."""
    return restore_plans(pictures, [plan_faces(p, models, options) for p in pictures], models, options)


def restore_plans(pictures: Sequence[Picture], plans: Sequence[FacePlan], models: Models, options: RestoreOptions,
                  *, detected: Sequence[Sequence[bool]] | None = None) -> list[RestoreResult]:
    """Restore planned faces (all plans' crops batched together) and paste them back into their pictures.

    ``detected``: per plan, per face, False for faces filled in from neighbouring video frames.
    """
    crops = [crop for plan in plans for crop in plan.crops]
    outputs = _restore_crops(crops, models, options)
    distances: list[float | None] = [None] * len(crops)
    if options.measure_identity and crops:
        from codeformer.face.identity import identity_distance

        embedder = _embedder(models)
        distances = identity_distance(embedder.embed(crops), embedder.embed(outputs)).tolist()
    results, start = [], 0
    for index, (picture, plan) in enumerate(zip(pictures, plans)):
        count = len(plan.crops)
        restored = finish_restored(plan, outputs[start:start + count], options.blend)
        final = compose(
            picture, plan, restored, upscale=options.upscale, parser=models.parser,
            bg_upsampler=models.bg_upsampler, face_upsampler=models.face_upsampler,
            draw_box=options.draw_box, batch_size=models.batch_size, progress=models.progress,
        )
        flags = detected[index] if detected is not None else [True] * count
        faces = tuple(
            RestoredFace(*_in_picture(face, plan.work_scale), face.score, crop, out, number, distance, flag,
                         options.blend, reference)
            for face, number, crop, out, distance, flag, reference in zip(
                plan.faces, plan.numbers, plan.crops, restored, distances[start:start + count], flags,
                plan.reference_distances or [None] * count)
        )
        start += count
        results.append(RestoreResult(final, faces, plan.skipped))
    return results


def _restore_crops(crops: list[np.ndarray], models: Models, options: RestoreOptions) -> list[np.ndarray]:
    """The restorer's outputs for ``crops``, one batch at a time so that a progress bar can tick per batch.

    The chunks are the restorer's own batches: the outputs are those of one ``restore`` call.
    """
    step = models.batch_size
    if not models.progress or len(crops) <= step:
        return models.restorer.restore_crops(crops, fidelity_weight=options.fidelity_weight, batch_size=step)
    outputs: list[np.ndarray] = []
    with Progress(total=len(crops), desc="faces", unit="face", per_item=False, leave=False) as bar:
        for start in range(0, len(crops), step):
            chunk = crops[start:start + step]
            outputs += models.restorer.restore_crops(chunk, fidelity_weight=options.fidelity_weight, batch_size=step)
            bar.update(len(chunk))
    return outputs


def restore_frames(frames: Sequence[np.ndarray], models: Models, options: RestoreOptions) -> list[RestoreResult]:
    """Restore consecutive BGR uint8 video frames (faces of all frames share network forwards)."""
    return restore_whole_pictures([Picture(frame, None, 3) for frame in frames], models, options)
