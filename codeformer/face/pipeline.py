"""Whole-picture restoration as small stages: plan, restore, compose.

1. :func:`plan_faces` detects faces and aligns each onto the 512x512 template (the reference's
   ``read_image`` + ``get_face_landmarks_5`` + ``align_warp_face``);
2. the crops of any number of plans go through :meth:`FaceRestorer.restore` together, so faces from
   several pictures (or video frames) share one network forward;
3. :func:`compose` upscales the picture (resize or background upsampler), parses the restored faces
   and pastes them back (the reference's ``paste_faces_to_input_image``).

:func:`restore_pictures` chains the three. The output is exactly the input size times ``upscale``, in
the input's dtype, with its alpha channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import cv2
import numpy as np

from codeformer.color import is_gray, to_gray
from codeformer.face.alignment import TEMPLATES, estimate_alignment, warp_face
from codeformer.face.detection import DetectedFace, FaceDetector, find_faces
from codeformer.face.pasteback import PastedFace, paste_faces
from codeformer.imageio import Picture

if TYPE_CHECKING:
    from codeformer.face.parsing import FaceParser
    from codeformer.restorer import FaceRestorer
    from codeformer.upsampler import Upsampler

logger = logging.getLogger(__name__)

# The reference upsamples pictures whose short side is below this before detecting and aligning:
# small faces are found more reliably and the 512 px crops are not blown up from a few pixels.
WORK_MIN_SIDE = 512
# Eye distance (px, on the working image) below which a detection is a side view or too small.
EYE_DIST_THRESHOLD = 5.0

GrayMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class RestoreOptions:
    """How faces in whole pictures are restored (the command line's options)."""

    fidelity_weight: float = 0.5  # 0 = best quality, 1 = most faithful to the input
    upscale: int = 2  # output = input size x upscale
    only_center_face: bool = False
    grayscale: GrayMode = "auto"  # restored faces stay gray in gray pictures
    use_parse: bool = True  # blend with the ParseNet face mask (else the square soft mask alone)
    draw_box: bool = False
    batch_size: int = 4  # faces per network forward


@dataclass
class Models:
    """The networks a whole-picture restoration uses; the optional ones may be None."""

    restorer: FaceRestorer
    detector: FaceDetector
    parser: FaceParser | None = None
    bg_upsampler: Upsampler | None = None
    face_upsampler: Upsampler | None = None


@dataclass(frozen=True)
class FacePlan:
    """Faces found in one picture, aligned and cropped, ready for the restorer."""

    work_image: np.ndarray  # (h, w, 3) BGR uint8: the picture as detected on (short side >= 512)
    work_scale: float  # work_image size / picture size (1 unless the picture was small)
    faces: tuple[DetectedFace, ...]  # in the detector's order, coordinates on work_image
    affines: tuple[np.ndarray, ...]  # (2, 3) each: work_image -> 512 crop
    crops: tuple[np.ndarray, ...]  # (512, 512, 3) BGR uint8 each
    gray: bool  # restored faces are to be made gray (detected or forced)


@dataclass(frozen=True)
class PictureResult:
    final: np.ndarray  # (H * s, W * s, C): the picture's dtype and channels
    faces: tuple[DetectedFace, ...]
    cropped_faces: tuple[np.ndarray, ...]  # what went into the network
    restored_faces: tuple[np.ndarray, ...]  # what came out (made gray for gray pictures), 512x512


def working_image(picture: Picture) -> tuple[np.ndarray, float]:
    """The 8-bit picture the reference detects on, and its scale: short side raised to 512 if below."""
    image = picture.bgr8()
    short_side = min(image.shape[:2])
    if short_side >= WORK_MIN_SIDE:
        return image, 1.0
    factor = WORK_MIN_SIDE / short_side
    return cv2.resize(image, (0, 0), fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR), factor


def plan_faces(picture: Picture, detector: FaceDetector, *, only_center_face: bool = False,
               grayscale: GrayMode = "auto") -> FacePlan:
    """Detect, select and align the faces of one picture."""
    image, scale = working_image(picture)
    gray = grayscale == "on" or (grayscale == "auto" and is_gray(image))
    template = TEMPLATES[detector.template_name]
    faces, affines, crops = [], [], []
    for face in find_faces(image, detector, only_center_face=only_center_face, eye_dist_threshold=EYE_DIST_THRESHOLD):
        affine = estimate_alignment(face.landmarks, template)
        if affine is None:  # degenerate landmarks: nothing sensible to crop
            logger.debug("skipped a face with degenerate landmarks at %s", np.round(face.box).tolist())
            continue
        faces.append(face)
        affines.append(affine)
        crops.append(warp_face(image, affine))
    return FacePlan(image, scale, tuple(faces), tuple(affines), tuple(crops), gray)


def finish_restored(plan: FacePlan, restored: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Restored faces as they are pasted: made gray, toned like their crops, for gray pictures."""
    if not plan.gray:
        return list(restored)
    return [to_gray(face, crop) for face, crop in zip(restored, plan.crops)]


def _canvas(picture: Picture, size: tuple[int, int], bg_upsampler: Upsampler | None, upscale: int) -> np.ndarray:
    """The picture (with alpha) upscaled to ``size`` = (width, height): resized, or through the upsampler."""
    source = picture.with_alpha(picture.bgr)
    if bg_upsampler is None:
        return cv2.resize(source, size, interpolation=cv2.INTER_LINEAR)
    upscaled = bg_upsampler.upscale(source, outscale=upscale)
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
) -> np.ndarray:
    """Paste restored faces into the upscaled picture; exactly (H * upscale, W * upscale), input dtype."""
    work_h, work_w = plan.work_image.shape[:2]
    canvas = _canvas(picture, (work_w * upscale, work_h * upscale), bg_upsampler, upscale)
    if restored:
        faces = list(restored)
        if face_upsampler is not None:
            faces = [face_upsampler.upscale(face, outscale=upscale) for face in faces]
        masks: list[np.ndarray | None] = [None] * len(faces)
        if parser is not None:
            # The reference parses each pasted face brought back to 512 px.
            to_parse = [face if face.shape[0] == 512 else cv2.resize(face, (512, 512), interpolation=cv2.INTER_LINEAR)
                        for face in faces]
            masks = list(parser.masks(to_parse, batch_size=batch_size))
        pasted = [PastedFace(face, affine, parse_mask=mask) for face, affine, mask in zip(faces, plan.affines, masks)]
        canvas = paste_faces(canvas, pasted, upscale=upscale, draw_box=draw_box)
    target = (picture.width * upscale, picture.height * upscale)
    if (canvas.shape[1], canvas.shape[0]) != target:
        # Small pictures were worked on enlarged (as the reference does); the output is still input x s.
        canvas = cv2.resize(canvas, target, interpolation=cv2.INTER_AREA)
    if picture.source_channels == 1 and plan.gray:
        canvas = np.ascontiguousarray(canvas[:, :, 0])  # gray in, gray out: the three channels are equal
    return canvas


def restore_pictures(pictures: Sequence[Picture], models: Models, options: RestoreOptions) -> list[PictureResult]:
    """Restore every face of several pictures, faces of all pictures batched through the network."""
    plans = [plan_faces(p, models.detector, only_center_face=options.only_center_face, grayscale=options.grayscale)
             for p in pictures]
    crops = [crop for plan in plans for crop in plan.crops]
    outputs = models.restorer.restore(crops, w=options.fidelity_weight, adain=True, batch_size=options.batch_size)
    results, start = [], 0
    for picture, plan in zip(pictures, plans):
        restored = finish_restored(plan, outputs[start:start + len(plan.crops)])
        start += len(plan.crops)
        final = compose(
            picture, plan, restored, upscale=options.upscale,
            parser=models.parser if options.use_parse else None,
            bg_upsampler=models.bg_upsampler, face_upsampler=models.face_upsampler,
            draw_box=options.draw_box, batch_size=options.batch_size,
        )
        results.append(PictureResult(final, plan.faces, plan.crops, tuple(restored)))
    return results


def restore_picture(picture: Picture, models: Models, options: RestoreOptions) -> PictureResult:
    """Restore every face of one picture; see :func:`restore_pictures`."""
    return restore_pictures([picture], models, options)[0]


def restore_frames(frames: Sequence[np.ndarray], models: Models, options: RestoreOptions) -> list[PictureResult]:
    """Restore consecutive BGR uint8 video frames (faces of all frames share network forwards)."""
    return restore_pictures([Picture(frame, None, 3) for frame in frames], models, options)
