"""Blending restored faces back into the upscaled picture, inside each face's bounding box.

The recipe is the reference's (sczhou/CodeFormer ``FaceRestoreHelper.paste_faces_to_input_image``).
For each face, in list order, on the canvas (the picture upscaled by the whole number ``s``):

1. warp the restored face and a square mask of ones into the canvas (bilinear, zero outside);
2. erode the warped mask by ``2 s`` px (removes the black interpolation rim); the pasted face is the
   warped face times this eroded mask; the face area is the eroded mask's sum;
3. soft mask: erode again by ``2 * edge`` px and Gaussian-blur with a ``2 * edge + 1`` kernel, where
   ``edge = int(sqrt(area)) // 20``; with a parse mask (ParseNet, :func:`parse_labels_to_mask`)
   warped the same way, the soft mask is the smaller of the two at each pixel;
4. ``canvas = soft * pasted + (1 - soft) * canvas``, kept in floating point over all faces (float32
   without parse masks, float64 with them, as the reference's dtypes work out; always float64 on
   16-bit canvases); the result is cast to the canvas dtype by truncation;
5. with ``draw_box``, each face's square border (``int(1400 / sqrt(area))`` px thick in the crop)
   is blended in green after all faces.

The reference does every step on full-size copies of the canvas, which costs O(picture size) per
face. :func:`paste_faces` computes the same pixels inside a window around each face only, so its
cost grows with the faces' area, not the picture's; :func:`paste_faces_full_frame` keeps the
straightforward full-canvas recipe and is what the fast path is tested against (bit for bit).

Why a window gives the same pixels as the full canvas (see ``_plan_face``): every warped layer is zero
outside the face's *support* S, the integer rectangle covering the crop square mapped into the
canvas (plus 2 px for rounding). Erosions never grow S, and the blur spreads it by its radius
``r <= r_max`` (``r_max`` is bounded from S's pixel count, before the area is known). The window is S
grown by ``margin = max(2 s, 2 r_max, 3) + 2`` px and clipped to the canvas. A pixel closer than
``margin`` to a window side that lies inside the canvas is outside S, so (a) an erosion (a minimum
over a window that includes the pixel itself, values >= 0) is 0 there on both paths, and (b) the
blur at a pixel within ``r`` of such a side only reads pixels at most ``2 r < margin`` away, all zero
on the full canvas and zero after the window's border reflection too. Window sides on the canvas
edge see the same border rule on both paths. So every layer equals the full-canvas one inside the
window, and the face changes no pixel outside S grown by ``r_max``.

Two more things make the agreement bit-exact rather than approximate:

- Sampling: ``cv2.warpAffine`` splits the coordinate arithmetic between a per-row and a per-column
  term in fixed point, so a warp of a window is not bit-identical to the same pixels of a full warp
  (measured: 1 grey level on about 0.1 % of pixels, up to 0.04 on float masks). Both paths therefore
  sample with ``cv2.remap`` on coordinates computed per canvas pixel in float64 (then float32), which
  depends only on the pixel's position; compared with ``cv2.warpAffine`` this differs by at most 1
  grey level on about 0.1 % of pixels.
- Vector loops: OpenCV filters process rows in SIMD blocks with a scalar tail (fused vs separate
  multiply-add: last-bit differences). Window columns start at a multiple of 64 (and end at one, or
  at the canvas edge), so every pixel goes through the same code path as on the full canvas.

The face area is summed in float64 over S on both paths, row by row, the row sums added exactly
(``math.fsum``), so any split into bands gives the same total (the reference sums float32 over the
whole canvas: a relative difference below 1e-6, which changes the integer edge width only when
``sqrt(area)`` lies within 1e-5 of a multiple of 20).

Overlapping faces share one floating-point buffer, so a later face blends over the untruncated
values of earlier ones, as on the reference's canvas. The draw_box borders are blended in float64
and rounded (the reference leaves float32 values that ``cv2.imwrite`` rounds). Measured against a
transliteration of the reference that uses ``cv2.warpAffine``: at most 1 grey level apart on about
0.1 % of pixels (uint8, s = 1, 2, 3, with and without parse masks).

Big faces on big canvases: a face region (the union of overlapping faces' reach) of more than
``PASTE_BAND_PIXELS`` pixels is blended a band of rows at a time, so no float buffer grows with the
picture. Each band's soft masks are computed from the band's rows plus, on each side, the rows the
erosions and the blur read (``_band_reach``); the area is summed beforehand, band by band. Rows
farther than that from a cut see the same values as in the whole window, and the blend is per
pixel, in the same face order: the bands give the window's pixels bit for bit.

Example::

    canvas = cv2.resize(picture, (w * 2, h * 2), interpolation=cv2.INTER_LINEAR)
    faces = [PastedFace(restored, affine, parse_mask=mask) for restored, affine, mask in ...]
    result = paste_faces(canvas, faces, upscale=2)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from codeformer.errors import CodeFormerError
from codeformer.face.alignment import FACE_SIZE, paste_affine, transform_points, validate_upscale

logger = logging.getLogger(__name__)

__all__ = [
    "BOX_COLOR_BGR",
    "MASK_COLORMAP",
    "PASTE_BAND_PIXELS",
    "PastedFace",
    "parse_labels_to_mask",
    "paste_faces",
    "paste_faces_full_frame",
]

# ------------------------------------------------------------------------------------------------
# Parse mask post-processing (the reference's, from ParseNet labels to a soft mask)

PARSE_SIZE = 512  # ParseNet's output side
# Mask value per ParseNet class (19 classes): the reference keeps classes 1-13 and 15 (the face and
# its parts) and drops 0 (background), 14, 16, 17 and 18.
MASK_COLORMAP: tuple[int, ...] = (0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 0, 0, 0)
PARSE_BLUR_KSIZE = 101  # Gaussian kernel side of each of the two blurs
PARSE_BLUR_SIGMA = 11.0
PARSE_BLUR_PASSES = 2
PARSE_BORDER = 10  # px zeroed along each side of the blurred mask ("remove the black borders")
MASK_SCALE = 255.0  # colormap values are 0/255; the mask is divided back to [0, 1]

# ------------------------------------------------------------------------------------------------
# Paste-back constants (the reference's)

EDGE_DIVISOR = 20  # soft edge width = int(sqrt(face area)) // 20
BOX_THICKNESS_NUMERATOR = 1400.0  # draw_box border = int(1400 / sqrt(face area)) crop pixels
BOX_COLOR_BGR: tuple[int, int, int] = (0, 255, 0)  # draw_box green (8-bit scale)
UINT16_PER_UINT8 = 257  # 65535 / 255: a uint8 face on a 16-bit canvas
# cv2.erode with an empty kernel (the reference's edge width 0 on faces under 20 px) erodes 3x3.
EMPTY_KERNEL_EROSION = 3

_SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_COLOR_CHANNELS = 3
_ALPHA_CHANNELS = 4
# Extra px around the mapped crop square: float32 sampling coordinates and fixed-point rounding may
# make a pixel a hair outside the square sample it.
_SUPPORT_SAFETY = 2
# Window columns start at multiples of this (in elements): more than OpenCV's widest unrolled SIMD
# step, so each pixel meets the same vector/tail code as on the full canvas.
_COLUMN_ALIGN = 64
_MAP_CHUNK_ROWS = 1024  # rows of sampling coordinates computed at a time (bounds temporaries)
_BLEND_CHUNK_ROWS = 64  # rows blended at a time: small temporaries stay in cache (no page faults)
# Canvas pixels of a face region blended at a time: its float64 buffer and per-face layers take about
# 60 bytes a pixel, so about 250 MB. Face regions this size or smaller are done in one piece.
PASTE_BAND_PIXELS = 1 << 22


@dataclass(frozen=True, eq=False)
class PastedFace:
    """A restored face and where it goes.

    - ``face``: (F, F, 3) BGR uint8; F = 512, or the size a face upsampler enlarged it to (the
      reference's ``512 * upscale``), see :func:`codeformer.face.alignment.paste_affine`;
    - ``affine``: (2, 3) alignment affine, picture at 1x -> 512x512 crop (what
      :func:`codeformer.face.alignment.estimate_alignment` returned);
    - ``parse_mask``: (512, 512) float in [0, 1] from :func:`parse_labels_to_mask`, or ``None`` to
      blend with the square soft mask only (the ``--no_parse`` option). Resized to F when F != 512.
    """

    face: np.ndarray
    affine: np.ndarray
    parse_mask: np.ndarray | None = None
    crop_size: int = FACE_SIZE  # side of the crop ``affine`` maps onto (the restorer's input size)


def parse_labels_to_mask(labels: np.ndarray) -> np.ndarray:
    """Soft paste-back mask (512, 512) float64 in [0, 1] from ParseNet class labels (512, 512) int.

    The reference's post-processing: classes mapped through :data:`MASK_COLORMAP` (0 or 255; labels
    outside 0..18 count as 0), two Gaussian blurs (101x101, sigma 11), 10 px zeroed along each side,
    divided by 255.
    """
    classes = np.asarray(labels)
    if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"expected (H, W) integer class labels, got {classes.dtype} {classes.shape}")
    colormap = np.asarray(MASK_COLORMAP, dtype=np.float64)
    known = (classes >= 0) & (classes < len(MASK_COLORMAP))
    mask = np.zeros(classes.shape, dtype=np.float64)  # (H, W)
    mask[known] = colormap[classes[known]]
    for _ in range(PARSE_BLUR_PASSES):
        mask = cv2.GaussianBlur(mask, (PARSE_BLUR_KSIZE, PARSE_BLUR_KSIZE), PARSE_BLUR_SIGMA)
    mask[:PARSE_BORDER, :] = 0
    mask[-PARSE_BORDER:, :] = 0
    mask[:, :PARSE_BORDER] = 0
    mask[:, -PARSE_BORDER:] = 0
    return mask / MASK_SCALE


# ------------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class _Box:
    """Integer rectangle of canvas pixels, half-open: columns [x0, x1), rows [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    @property
    def pixels(self) -> int:
        return 0 if self.empty else (self.x1 - self.x0) * (self.y1 - self.y0)

    def grown(self, margin: int, width: int, height: int) -> _Box:
        """This box grown by ``margin`` px on every side, clipped to a width x height canvas."""
        return _Box(max(0, self.x0 - margin), max(0, self.y0 - margin),
                    min(width, self.x1 + margin), min(height, self.y1 + margin))

    def intersects(self, other: _Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def intersection(self, other: _Box) -> _Box:
        return _Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1))

    def union(self, other: _Box) -> _Box:
        return _Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def within(self, outer: _Box) -> tuple[slice, slice]:
        """Row and column slices of this box inside an array that covers ``outer``."""
        return (slice(self.y0 - outer.y0, self.y1 - outer.y0), slice(self.x0 - outer.x0, self.x1 - outer.x0))


@dataclass(frozen=True)
class _FacePlan:
    """Where one face lands on the canvas and which windows its computation needs."""

    face_size: int
    to_canvas: np.ndarray  # (2, 3) restored crop -> canvas
    from_canvas: np.ndarray  # (2, 3) canvas -> restored crop (what sampling evaluates per pixel)
    support: _Box  # every warped layer is zero outside it
    window: _Box  # support + margin, column-aligned: layers computed here equal the full-canvas ones
    blend: _Box  # support + maximum blur radius, column-aligned: the face changes no pixel outside


def _max_edge_width(support: _Box) -> int:
    """Upper bound of ``int(sqrt(area)) // 20`` before the area is known (area <= pixels of S)."""
    # Warped mask values are at most 1 (plus float rounding: the +1 terms absorb it).
    return (math.isqrt(support.pixels) + 1) // EDGE_DIVISOR + 1


def _align_columns(box: _Box, width: int) -> _Box:
    x0 = box.x0 // _COLUMN_ALIGN * _COLUMN_ALIGN
    x1 = min(width, -(-box.x1 // _COLUMN_ALIGN) * _COLUMN_ALIGN)
    return _Box(x0, box.y0, x1, box.y1)


def _plan_face(face: PastedFace, upscale: int, width: int, height: int) -> _FacePlan | None:
    """Geometry of one face on a width x height canvas; ``None`` when it misses the canvas entirely."""
    size = face.face.shape[0]
    to_canvas = paste_affine(face.affine, upscale, size, face.crop_size)
    # Bilinear sampling is non-zero for crop coordinates in (-1, F): map that square's corners.
    corners = np.array([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]])
    mapped = transform_points(to_canvas, corners)  # (4, 2)
    low = np.floor(mapped.min(axis=0)) - _SUPPORT_SAFETY
    high = np.ceil(mapped.max(axis=0)) + _SUPPORT_SAFETY + 1
    support = _Box(max(0, int(low[0])), max(0, int(low[1])), min(width, int(high[0])), min(height, int(high[1])))
    if support.empty:
        return None
    max_edge = _max_edge_width(support)
    # Reach of the first erosion (2 s), of the second (2 * edge, or 3x3 for edge 0), twice the blur radius.
    margin = max(2 * upscale, 2 * max_edge, EMPTY_KERNEL_EROSION) + _SUPPORT_SAFETY
    return _FacePlan(
        face_size=size,
        to_canvas=to_canvas,
        from_canvas=cv2.invertAffineTransform(to_canvas),
        support=support,
        window=_align_columns(support.grown(margin, width, height), width),
        blend=_align_columns(support.grown(max_edge + 1, width, height), width),
    )


# ------------------------------------------------------------------------------------------------
# Per-face layers


def _sampling_maps(from_canvas: np.ndarray, box: _Box) -> tuple[np.ndarray, np.ndarray]:
    """Crop coordinates (x, y) of the canvas pixels of ``box``: two (h, w) float32 maps for cv2.remap.

    Each pixel's coordinate is computed in float64 from its canvas position alone, so any box gives
    exactly the values of the same pixels on the full canvas.
    """
    (a, b, c), (d, e, f) = from_canvas
    columns = np.arange(box.x0, box.x1, dtype=np.float64)
    x_of_column, y_of_column = a * columns, d * columns  # (w,)
    shape = (box.y1 - box.y0, box.x1 - box.x0)
    map_x, map_y = np.empty(shape, np.float32), np.empty(shape, np.float32)
    for start in range(box.y0, box.y1, _MAP_CHUNK_ROWS):
        rows = np.arange(start, min(box.y1, start + _MAP_CHUNK_ROWS), dtype=np.float64)
        chunk = slice(start - box.y0, start - box.y0 + len(rows))
        map_x[chunk] = x_of_column[None, :] + (b * rows + c)[:, None]  # (rows, w), rounded to float32
        map_y[chunk] = y_of_column[None, :] + (e * rows + f)[:, None]
    return map_x, map_y


def _sample(source: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``source`` sampled bilinearly at ``maps`` (zero outside it): (h, w[, C]), its dtype."""
    return cv2.remap(source, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _erode(mask: np.ndarray, size: int) -> np.ndarray:
    # A (0, 0) kernel is passed through like the reference does (OpenCV then erodes 3x3).
    return cv2.erode(mask, np.ones((size, size), np.uint8))


@dataclass(frozen=True)
class _Mask:
    """One face's soft mask and eroded square mask over ``box`` of the canvas (a band of its reach, or all of it)."""

    box: _Box  # the arrays below cover this box
    area: float  # the eroded square mask's sum over the whole support: sets the edge width and box border
    soft: np.ndarray  # (h, w) float32: the eroded mask eroded again and blurred (parse mask not yet applied)
    eroded: np.ndarray  # (h, w) float32: the square mask eroded once (what the warped face is multiplied by)
    maps: tuple[np.ndarray, np.ndarray] | None = None  # (h, w) float32 each: crop coordinates, when kept


@dataclass(frozen=True)
class _Layers:
    """One face's blend inputs over ``box`` of the canvas."""

    box: _Box  # the pixels below cover this box; the face changes no pixel outside it
    soft: np.ndarray  # (h, w) float32 (float64 with a parse mask): blend weight of the face
    pasted: np.ndarray  # (h, w, 3) float32: warped face times the eroded mask, canvas value scale
    border: np.ndarray | None  # (h, w) float32 draw_box weight, when asked for


def _edge_width(area: float) -> int:
    return int(math.sqrt(area)) // EDGE_DIVISOR


def _band_reach(area: float, upscale: int) -> int:
    """Rows beyond a band its soft mask is computed from, so that the band's rows equal the whole window's.

    Each filter reads a bounded number of rows on each side: the first erosion (2 s), the second
    (2 * edge, or 3x3 for edge 0), the blur (edge). Rows farther than their sum from a cut are untouched by it.
    """
    edge = _edge_width(area)
    return 2 * upscale + max(2 * edge, EMPTY_KERNEL_EROSION) + edge + _SUPPORT_SAFETY


def _reach_box(plan: _FacePlan, area: float) -> _Box:
    """The pixels a face of this area can change: its support grown by the blur radius, in its window."""
    # The blur spreads the mask by `edge` px; boxes stay column-aligned (see the module docstring).
    window = plan.window
    grown = plan.support.grown(_edge_width(area) + 1, window.x1, window.y1).intersection(window)
    return _align_columns(grown, window.x1)


def _eroded_square(plan: _FacePlan, box: _Box, upscale: int,
                   maps: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The crop square of ones sampled into ``box``, eroded by 2 s (the black rim bilinear sampling leaves)."""
    maps = maps if maps is not None else _sampling_maps(plan.from_canvas, box)
    inv_mask = _sample(np.ones((plan.face_size, plan.face_size), np.float32), maps)
    return _erode(inv_mask, int(2 * upscale))  # (h, w) float32


def _row_sums(eroded: np.ndarray, box: _Box, support: _Box) -> np.ndarray:
    """float64 sums of ``eroded`` (covering ``box``) over each row of ``support`` inside ``box``."""
    part = support.intersection(box)
    if part.empty:
        return np.zeros(0)
    return np.ascontiguousarray(eroded[part.within(box)], dtype=np.float64).sum(axis=1)  # (rows,)


def _area(row_sums: Sequence[np.ndarray]) -> float:
    """The exactly rounded total of per-row sums: the same however the rows were split into bands."""
    return math.fsum(value for sums in row_sums for value in sums.tolist())


def _face_area(plan: _FacePlan, upscale: int, band_rows: int) -> float:
    """The eroded square mask's sum over the support, computed ``band_rows`` rows at a time."""
    reach = 2 * upscale + _SUPPORT_SAFETY  # rows the first erosion reads on each side
    window, support = plan.window, plan.support
    sums = []
    for top in range(support.y0, support.y1, band_rows):
        bottom = min(support.y1, top + band_rows)
        box = _Box(window.x0, max(window.y0, top - reach), window.x1, min(window.y1, bottom + reach))
        band = _Box(support.x0, top, support.x1, bottom)
        sums.append(_row_sums(_eroded_square(plan, box, upscale), box, band))
    return _area(sums)


def _face_mask(plan: _FacePlan, box: _Box, *, upscale: int, crop_to_reach: bool, area: float | None = None,
               rows: tuple[int, int] | None = None) -> _Mask | None:
    """The reference's soft mask of one face, computed over ``box`` (which contains ``plan.support``'s columns).

    ``area``: the face's area, when ``box`` is a band that does not hold its whole support (see
    :func:`_face_area`); such a band must reach :func:`_band_reach` rows beyond ``rows`` where the
    window does, and its mask is made of compact copies (the band's extra rows are freed). Without
    it, the mask's arrays are views of ``box``'s, and the sampling maps are kept for the colours.
    With ``crop_to_reach`` the mask covers only the pixels the face can change (its support grown by
    the blur radius, column-aligned, within its window), else all of ``box``; ``rows`` (canvas rows,
    half-open) crops it further. ``None`` when the eroded mask is empty (the face barely touches the
    canvas): such a face changes nothing (the reference would also fail to size its draw_box border).
    """
    banded = area is not None
    maps = None if banded else _sampling_maps(plan.from_canvas, box)
    eroded = _eroded_square(plan, box, upscale, maps)
    if area is None:
        area = _area([_row_sums(eroded, box, plan.support)])
    if area <= 0.0:
        return None
    edge = _edge_width(area)
    out_box = _reach_box(plan, area).intersection(box) if crop_to_reach else box
    if rows is not None:
        out_box = out_box.intersection(_Box(out_box.x0, rows[0], out_box.x1, rows[1]))
    if out_box.empty:
        return _Mask(out_box, area, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
    inside = out_box.within(box)
    soft = cv2.GaussianBlur(_erode(eroded, 2 * edge), (2 * edge + 1, 2 * edge + 1), 0)[inside]  # (h, w) float32
    if banded:
        return _Mask(out_box, area, np.ascontiguousarray(soft), np.ascontiguousarray(eroded[inside]))
    return _Mask(out_box, area, soft, eroded[inside], (maps[0][inside], maps[1][inside]))


def _face_colour(face: PastedFace, plan: _FacePlan, mask: _Mask, box: _Box, *, value_scale: int,
                 draw_box: bool) -> _Layers:
    """The blend inputs of one face over ``box`` (inside ``mask.box``): the parse mask applied, the face warped."""
    size = plan.face_size
    inside = box.within(mask.box)
    if mask.maps is not None:
        maps = (mask.maps[0][inside], mask.maps[1][inside])
    else:
        maps = _sampling_maps(plan.from_canvas, box)  # the same values as any other box's at these pixels
    soft = mask.soft[inside]
    if face.parse_mask is not None:
        parse = np.asarray(face.parse_mask, dtype=np.float64)
        if parse.shape != (size, size):
            parse = cv2.resize(parse, (size, size), interpolation=cv2.INTER_LINEAR)
        soft = np.minimum(_sample(parse, maps), soft)  # (h, w) float64: where the parse mask is lower it wins
    restored = face.face if value_scale == 1 else face.face.astype(np.uint16) * np.uint16(value_scale)
    pasted = mask.eroded[inside][:, :, None] * _sample(restored, maps)  # (h, w, 3) float32
    border = None
    if draw_box:
        thickness = int(BOX_THICKNESS_NUMERATOR / math.sqrt(mask.area))
        frame = np.ones((size, size), np.float32)
        frame[thickness:size - thickness, thickness:size - thickness] = 0
        border = _sample(frame, maps)  # (h, w)
    return _Layers(box=box, soft=soft, pasted=pasted, border=border)


def _face_layers(face: PastedFace, plan: _FacePlan, box: _Box, *, upscale: int, value_scale: int,
                 draw_box: bool, crop_to_reach: bool) -> _Layers | None:
    """The reference's per-face layers, computed over ``box`` (which contains ``plan.support``), in one piece.

    With ``crop_to_reach`` the returned layers cover only the pixels the face can change (its support
    grown by the blur radius), else all of ``box``. ``None`` when the face changes nothing (see :func:`_face_mask`).
    """
    mask = _face_mask(plan, box, upscale=upscale, crop_to_reach=crop_to_reach)
    if mask is None:
        return None
    return _face_colour(face, plan, mask, mask.box, value_scale=value_scale, draw_box=draw_box)


# ------------------------------------------------------------------------------------------------
# Blending


def _blend_dtype(canvas: np.ndarray, faces: Sequence[PastedFace]) -> type[np.floating]:
    """Arithmetic precision of the blend: the reference's, where it has one.

    The reference blends in float32 without parse masks (float32 masks and faces on a uint8 canvas)
    and in float64 with them (the parse mask is float64). Truncation to uint8 makes the difference
    visible (one grey level on a few % of pixels), so the 8-bit cases follow it; 16-bit canvases
    (which the reference reduces to 8 bits) always use float64, as do lists that mix both kinds.
    """
    if canvas.dtype == np.uint8 and all(face.parse_mask is None for face in faces):
        return np.float32
    return np.float64


def _blend_into(region: np.ndarray, soft: np.ndarray, pasted: np.ndarray, precision: type[np.floating]) -> None:
    """``region = soft * pasted + (1 - soft) * region`` in place, computed in ``precision``.

    ``region`` is (h, w, 3) float64; with float32 precision its values are float32 numbers (only
    float32 blends ever wrote it), so the round trip through float32 is exact.
    """
    for start in range(0, region.shape[0], _BLEND_CHUNK_ROWS):
        rows = slice(start, start + _BLEND_CHUNK_ROWS)
        weight = soft[rows].astype(precision)[:, :, None]  # (rows, w, 1)
        face_part = weight * pasted[rows].astype(precision, copy=False)  # (rows, w, 3)
        target = region[rows].astype(precision, copy=False)  # float32: a copy; float64: the region itself
        target *= precision(1.0) - weight
        target += face_part
        region[rows] = target


def _truncate(region: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float canvas values to ``dtype`` the reference's way (truncation), clipped to its range."""
    return np.clip(region, 0, np.iinfo(dtype).max).astype(dtype)


def _draw_borders(colors: np.ndarray, borders: Sequence[tuple[tuple[slice, slice], np.ndarray]],
                  value_scale: int) -> np.ndarray:
    """Blend green borders, in order, over the truncated colours (h, w, 3); rounds to the dtype."""
    region = colors.astype(np.float64)
    green = np.asarray(BOX_COLOR_BGR, dtype=np.float64) * value_scale  # (3,)
    for where, border in borders:
        _blend_into(region[where], border, np.broadcast_to(green, (*border.shape, len(green))), np.float64)
    return np.clip(np.rint(region), 0, np.iinfo(colors.dtype).max).astype(colors.dtype)


# ------------------------------------------------------------------------------------------------
# Public entry points


def _check_inputs(canvas: np.ndarray, faces: Sequence[PastedFace]) -> int:
    """Validate; returns the value scale of a uint8 face on this canvas (1 or 257)."""
    if (not isinstance(canvas, np.ndarray) or canvas.ndim != 3
            or canvas.shape[2] not in (_COLOR_CHANNELS, _ALPHA_CHANNELS) or canvas.dtype not in _SUPPORTED_DTYPES):
        got = f"{canvas.dtype} {canvas.shape}" if isinstance(canvas, np.ndarray) else type(canvas).__name__
        raise CodeFormerError(
            f"faces can only be pasted into 8- or 16-bit BGR or BGRA pictures (got {got}): convert the picture first"
        )
    for index, face in enumerate(faces):
        image = face.face
        if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
                or image.shape[2] != _COLOR_CHANNELS or image.shape[0] != image.shape[1]):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"face {index}: expected a square (F, F, 3) BGR uint8 crop, got {got}")
        if face.parse_mask is not None and np.ndim(face.parse_mask) != 2:
            raise ValueError(f"face {index}: the parse mask must be a 2-D float array, got {np.shape(face.parse_mask)}")
    return 1 if canvas.dtype == np.uint8 else UINT16_PER_UINT8


def paste_faces(canvas: np.ndarray, faces: Sequence[PastedFace], *, upscale: int,
                draw_box: bool = False, in_place: bool = False, band_pixels: int = PASTE_BAND_PIXELS) -> np.ndarray:
    """Blend restored faces into ``canvas``, working inside each face's bounding box.

    ``canvas`` is the picture already upscaled to exactly ``(H * upscale, W * upscale)`` (resized or
    through a background upsampler): (h, w, 3) BGR or (h, w, 4) BGRA, uint8 or uint16. Only BGR is
    blended; alpha is kept. On a 16-bit canvas the uint8 faces are scaled by 257, so the picture keeps
    its 16-bit precision outside the faces. Faces are pasted in list order (later ones over earlier
    ones); a face entirely outside the canvas is skipped. ``draw_box`` draws the reference's green
    square around each face, after all faces are blended.

    Returns a new array (same shape and dtype) and leaves the inputs alone, unless ``in_place``: then
    ``canvas`` itself is blended into and returned (no copy of a big picture). Gives exactly the
    pixels of :func:`paste_faces_full_frame`, at a cost that grows with the faces' area only; a face
    region of more than ``band_pixels`` pixels is blended a band of rows at a time, so the floating
    point buffers stay that size whatever the face's.
    """
    scale = validate_upscale(upscale)
    value_scale = _check_inputs(canvas, faces)
    precision = _blend_dtype(canvas, faces)
    height, width = canvas.shape[:2]
    result = canvas if in_place else canvas.copy()
    placed = []
    for index, face in enumerate(faces):
        plan = _plan_face(face, scale, width, height)
        if plan is None:
            logger.debug("face %d lies entirely outside the %dx%d canvas: skipped", index, width, height)
        else:
            placed.append((face, plan))
    for group in _overlapping_groups([plan.blend for _, plan in placed]):
        _paste_group(result, [placed[index] for index in group], scale, value_scale, draw_box, precision,
                     max(1, band_pixels))
    return result


def _overlapping_groups(boxes: Sequence[_Box]) -> list[list[int]]:
    """Indices of boxes grouped by (transitive) overlap, each group in ascending order.

    Faces of one group share a floating-point buffer, so that a later face blends over the
    untruncated values of earlier ones, as on the reference's float canvas.
    """
    parent = list(range(len(boxes)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for first in range(len(boxes)):
        for second in range(first + 1, len(boxes)):
            if boxes[first].intersects(boxes[second]):
                parent[root(second)] = root(first)
    groups: dict[int, list[int]] = {}
    for index in range(len(boxes)):
        groups.setdefault(root(index), []).append(index)
    return sorted(groups.values())


def _paste_group(result: np.ndarray, group: Sequence[tuple[PastedFace, _FacePlan]], upscale: int,
                 value_scale: int, draw_box: bool, precision: type[np.floating], band_pixels: int) -> None:
    """Blend one group of overlapping faces into ``result`` in place, within their union box.

    The union is blended in bands of rows of about ``band_pixels`` pixels (one band when it is
    smaller): each band's float buffer takes every face of the group in order, as the whole union's
    would. A face's soft mask in a band is computed from the band's rows plus :func:`_band_reach`
    rows on each side, its area beforehand (:func:`_face_area`); both equal the whole window's.
    """
    union = group[0][1].blend
    for _, plan in group[1:]:
        union = union.union(plan.blend)
    band_rows = max(1, band_pixels // (union.x1 - union.x0))
    if union.y1 - union.y0 <= band_rows:  # one band: each face's layers over its whole window
        areas: list[float | None] = [None] * len(group)
        mask_rows = union.y1 - union.y0
    else:
        areas = [_face_area(plan, upscale, max(1, band_pixels // (plan.window.x1 - plan.window.x0)))
                 for _, plan in group]
        # Soft masks are computed for at least twice as many rows as they reach beyond: at most 2x the work.
        mask_rows = max(band_rows, *(2 * _band_reach(area, upscale) for area in areas if area))
    canvas_box = _Box(0, 0, result.shape[1], result.shape[0])
    for top in range(union.y0, union.y1, mask_rows):
        bottom = min(union.y1, top + mask_rows)
        masks = []
        for (face, plan), area in zip(group, areas):
            if area is None:
                box = plan.window
            elif area <= 0.0 or _reach_box(plan, area).intersection(_Box(union.x0, top, union.x1, bottom)).empty:
                continue
            else:
                reach = _band_reach(area, upscale)
                box = _Box(plan.window.x0, max(plan.window.y0, top - reach), plan.window.x1,
                           min(plan.window.y1, bottom + reach))
            mask = _face_mask(plan, box, upscale=upscale, crop_to_reach=True, area=area, rows=(top, bottom))
            if mask is not None and not mask.box.empty:
                masks.append((face, plan, mask))
        for start in range(top, bottom, band_rows):
            band = _Box(union.x0, start, union.x1, min(bottom, start + band_rows))
            rows, columns = band.within(canvas_box)
            region = result[rows, columns, :_COLOR_CHANNELS].astype(np.float64)  # (h, w, 3)
            borders: list[tuple[tuple[slice, slice], np.ndarray]] = []
            for face, plan, mask in masks:
                part = mask.box.intersection(band)
                if part.empty:
                    continue
                layers = _face_colour(face, plan, mask, part, value_scale=value_scale, draw_box=draw_box)
                _blend_into(region[part.within(band)], layers.soft, layers.pasted, precision)
                if layers.border is not None:
                    borders.append((part.within(band), layers.border))
            colors = _truncate(region, result.dtype)
            if borders:
                colors = _draw_borders(colors, borders, value_scale)
            result[rows, columns, :_COLOR_CHANNELS] = colors


def paste_faces_full_frame(canvas: np.ndarray, faces: Sequence[PastedFace], *, upscale: int,
                           draw_box: bool = False) -> np.ndarray:
    """The reference recipe on full-canvas arrays: same arguments and result as :func:`paste_faces`.

    Every layer of every face spans the whole canvas, as in the reference's
    ``paste_faces_to_input_image``; it costs O(canvas size) per face and exists to check the
    bounding-box path (see the module docstring for the few documented departures from the reference).
    """
    scale = validate_upscale(upscale)
    value_scale = _check_inputs(canvas, faces)
    precision = _blend_dtype(canvas, faces)
    height, width = canvas.shape[:2]
    whole = _Box(0, 0, width, height)
    region = canvas[:, :, :_COLOR_CHANNELS].astype(np.float64)  # (h, w, 3)
    borders: list[tuple[tuple[slice, slice], np.ndarray]] = []
    for face in faces:
        plan = _plan_face(face, scale, width, height)
        if plan is None:
            continue
        layers = _face_layers(face, plan, whole, upscale=scale, value_scale=value_scale,
                              draw_box=draw_box, crop_to_reach=False)
        if layers is None:
            continue
        _blend_into(region, layers.soft, layers.pasted, precision)
        if layers.border is not None:
            borders.append((whole.within(whole), layers.border))
    result = canvas.copy()
    colors = _truncate(region, canvas.dtype)
    if borders:
        colors = _draw_borders(colors, borders, value_scale)
    result[:, :, :_COLOR_CHANNELS] = colors
    return result
