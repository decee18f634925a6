"""sczhou/CodeFormer's pipeline for pictures, aligned faces and videos, written straightforwardly: the speed baseline.

What ``inference_codeformer.py`` runs with its default flags (``-w 0.5 -s 2``, ``retinaface_resnet50``,
no background upsampler, ParseNet masks), one picture at a time:

1. read: ``cv2.imread``; the face helper's ``read_image`` (16-bit check, gray check, short side
   raised to 512 when smaller);
2. detect: ``get_face_landmarks_5(resize=640, eye_dist_threshold=5)``;
3. align: ``align_warp_face`` (similarity fit with LMEDS, 512x512 warp with the gray border);
4. restore: each face alone, ``img2tensor`` / ``normalize`` / ``tensor2img`` as the reference (written
   inline here), CodeFormer in float32 through :func:`benchmarks.straightforward.straightforward_forward`
   (the reference's formulation of the network);
5. parse and paste: ``paste_faces_to_input_image``: the background resized bilinearly to the output
   size, then per face, on full-size canvases, the warped face, the square soft mask, the ParseNet mask
   (one face per forward), the smaller of the two, a float64 blend;
6. write: ``cv2.imwrite`` of every cropped face, restored face and the final picture (PNG).

Aligned faces (``--has_aligned``): read, resize to 512, gray check, restore, write. Video: every
frame decoded into a list first, each frame through 1-6 (its PNGs written, as the reference does),
then the final PNGs read back and encoded. The reference pipes raw frames from and to the ``ffmpeg``
program (libx264's defaults); here PyAV decodes, and encodes with libx264 at the settings our video
writer uses (CRF 18, preset medium, yuv420p, BT.601 limited range) and with the same rounding YUV <->
BGR conversions (:mod:`codeformer.video.stages`), so that both pipelines see the same decoded frames
and only the pipeline differs.

The face helper is facexlib's ``FaceRestoreHelper`` (the reference's ``facelib`` is a copy of it),
built around the networks handed in (its own constructor would download weights), with the
reference's versions of the methods where the copy has moved on from facexlib's: ``read_image`` (gray
check, enlargement of small pictures), ``get_face_landmarks_5`` (resize rule, confidence 0.8),
``add_restored_face`` (gray pictures) and ``paste_faces_to_input_image`` (bilinear background, square
soft mask combined with the parse mask). ``align_warp_face``, ``get_inverse_affine`` and
``clean_all`` are facexlib's, unchanged.

Detection size: since a75e7ae (2024-09-19) the reference resizes every picture to a short side of 640
for RetinaFace, down (``INTER_AREA``) as well as up (and so does :func:`codeformer.face.detection.find_faces`
since 86c9171); before, only smaller pictures were enlarged. ``upscale_only_detection=True`` runs
the older rule.

Faces: no weights can be downloaded, and a random-weight RetinaFace finds no faces. :class:`KnownFaces`
runs the detector on the picture it is handed (the cost of the default detector, in either
pipeline's code path) and returns the faces listed for that picture size (found once with dlib, so
in dlib's 5-point order; both pipelines then align them onto the reference's dlib template). Both
pipelines restore exactly the same faces, and each pays for detection what it would with real weights
(up to the work of scoring real candidates, which a zeroed classification head leaves out).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar
from unittest import mock

import cv2
import numpy as np
import torch

from benchmarks.straightforward import straightforward_forward
from codeformer.archs import CodeFormer

FIDELITY_WEIGHT = 0.5  # -w
UPSCALE = 2  # -s
FACE_SIZE = 512
DETECTION_SHORT_SIDE = 640  # get_face_landmarks_5(resize=640, ...)
EYE_DIST_THRESHOLD = 5  # get_face_landmarks_5(..., eye_dist_threshold=5)
RETINAFACE_CONFIDENCE = 0.8  # detect_faces' default, which the reference's helper keeps
WORK_MIN_SIDE = 512  # read_image enlarges pictures whose short side is below this
GRAY_THRESHOLD = 10  # is_gray(img, threshold=10)
PARSE_BLUR_KERNEL, PARSE_BLUR_SIGMA = 101, 11  # the parse mask is blurred twice with these
PARSE_BORDER = 10  # rows / columns of the parse mask zeroed on each side
# ParseNet class -> mask value (face parts 255; background, neck, cloth, hair, hat 0).
PARSE_MASK_COLORMAP = (0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 0, 0, 0)
# The reference's dlib template (1024x1024 FFHQ crop), divided by 1024 // 512 for 512 crops.
DLIB_TEMPLATE_AT_1024 = ((686.77227723, 488.62376238), (586.77227723, 493.59405941), (337.91089109, 488.38613861),
                         (437.95049505, 493.51485149), (513.58415842, 678.5049505))
VIDEO_CRF, VIDEO_PRESET, VIDEO_PIX_FMT = 18, "medium", "yuv420p"  # what our video writer uses by default
# AVColorSpace / AVColorRange tags our writer puts on the output of an untagged source: BT.601, limited range.
AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG = 6, 1

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------
# Timing


class StageClock:
    """Wall time per named stage; time inside a nested stage is charged to that stage only.

    For one thread: stages entered from several threads at once would be charged wrongly.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._since = 0.0

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._stack:
            top = self._stack[-1]
            self.seconds[top] = self.seconds.get(top, 0.0) + now - self._since
        self._since = now

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def wrap(self, name: str, function: Callable[..., T]) -> Callable[..., T]:
        """``function`` with every call timed as ``name``."""

        def timed(*args: Any, **kwargs: Any) -> T:
            with self.stage(name):
                return function(*args, **kwargs)

        return timed

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {name: round(value, digits) for name, value in self.seconds.items()}


# ------------------------------------------------------------------------------------------------
# Faces both pipelines get


class KnownFaces:
    """The default detector's cost with known faces, for both pipelines.

    ``cost(image)`` runs the detector on what it is given (random weights: its result is dropped);
    ``known`` maps a picture's ``(height, width)`` to its faces as RetinaFace rows ``(K, 15)``: box,
    score, then 5 landmarks (x, y) in dlib's order, in that picture's pixels. A picture resized for
    detection the way the reference resizes it (short side to 640) gets them scaled by the same factor.
    Rows come back in float32, as RetinaFace gives them: both pipelines then map them back to the
    picture with the same float32 arithmetic, so their landmarks are identical.

    - ``detect_faces(image, ...)``: facexlib's RetinaFace interface, for the reference's helper;
    - ``detect(image)``: :class:`codeformer.face.detection.FaceDetector`, for our pipeline.
    """

    name = "retinaface_resnet50"  # find_faces resizes as for RetinaFace
    template_name = "dlib"  # the landmarks are dlib's

    def __init__(self, cost: Callable[[np.ndarray], object], known: Mapping[tuple[int, int], np.ndarray]) -> None:
        self._cost = cost
        self._known = {tuple(size): np.asarray(rows, dtype=np.float64).reshape(-1, 15) for size, rows in known.items()}

    def _rows(self, image: np.ndarray) -> np.ndarray:
        size = image.shape[:2]
        if size in self._known:
            return self._known[size].astype(np.float32)
        for (height, width), rows in self._known.items():
            scale = DETECTION_SHORT_SIDE / min(height, width)  # as get_face_landmarks_5 computes it
            if (int(height * scale), int(width * scale)) == size:
                return (rows * scale).astype(np.float32)
        for (height, width), rows in self._known.items():  # resized some other way (small pictures enlarged)
            scale = size[0] / height
            if abs(width * scale - size[1]) <= 1.5:
                return (rows * scale).astype(np.float32)
        raise KeyError(f"no known faces for a {size[1]}x{size[0]} picture")

    def detect_faces(self, image: np.ndarray, conf_threshold: float = RETINAFACE_CONFIDENCE, *args: Any,
                     **kwargs: Any) -> np.ndarray:
        self._cost(image)
        return self._rows(image)

    def detect(self, image: np.ndarray) -> list:
        from codeformer.face.detection import DetectedFace

        self._cost(image)
        return [DetectedFace(box=row[0:4], score=row[4], landmarks=row[5:15].reshape(5, 2)) for row in self._rows(image)]


def face_rows(boxes: np.ndarray, landmarks: np.ndarray, score: float = 1.0) -> np.ndarray:
    """RetinaFace-style rows (K, 15) from boxes (K, 4) and landmarks (K, 5, 2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    points = np.asarray(landmarks, dtype=np.float64).reshape(len(boxes), 10)
    return np.hstack([boxes, np.full((len(boxes), 1), score), points])


# ------------------------------------------------------------------------------------------------
# Networks


@dataclass
class ReferenceModels:
    """The networks as the reference holds them: float32, NCHW, eval mode."""

    net: CodeFormer
    detector: KnownFaces
    parser: torch.nn.Module  # facexlib's ParseNet
    device: torch.device


def load_reference_models(weights_dir: str | os.PathLike[str], known: Mapping[tuple[int, int], np.ndarray],
                          device: str = "cpu") -> ReferenceModels:
    """CodeFormer, RetinaFace ResNet-50 and ParseNet from the official file layout under ``weights_dir``."""
    from codeformer.archs import build_codeformer
    from codeformer.registry import load_detector
    from codeformer.face.parsing import build_parsenet
    from codeformer.registry import model_spec
    from codeformer.weights import load_state_dict

    target = torch.device(device)
    root = Path(weights_dir)
    net = build_codeformer(load_state_dict(root / "CodeFormer" / "codeformer.pth")).to(target)
    # facexlib's RetinaFace, loaded strictly and put in eval mode: what the reference's init does.
    retinaface = load_detector("retinaface_resnet50", device=target, weights_dir=root).network

    def run_retinaface(image: np.ndarray) -> object:
        with torch.no_grad():
            return retinaface.detect_faces(image, RETINAFACE_CONFIDENCE)

    parser = build_parsenet()
    parser.load_state_dict(load_state_dict(root / model_spec("parsenet", "parser").weights[0]), strict=True)
    return ReferenceModels(net, KnownFaces(run_retinaface, known), parser.eval().to(target), target)


# ------------------------------------------------------------------------------------------------
# The reference's helper


def is_gray(image: np.ndarray, threshold: float = GRAY_THRESHOLD) -> bool:
    """The reference's test: mean variance of the channel differences at most ``threshold``."""
    if image.ndim == 2:
        return True
    b, g, r = (image[:, :, channel].astype(np.int16) for channel in range(3))
    return ((b - g).var() + (g - r).var() + (r - b).var()) / 3.0 <= threshold


def _to_network_input(image: np.ndarray) -> torch.Tensor:
    """``img2tensor(image, bgr2rgb=True, float32=True)`` then ``normalize(mean 0.5, std 0.5)``: (3, H, W)."""
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    tensor = torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)).float()
    return tensor.sub_(0.5).div_(0.5)


def _helper_class() -> type:
    from facexlib.utils.face_restoration_helper import FaceRestoreHelper

    class ReferenceFaceHelper(FaceRestoreHelper):
        """facexlib's helper with the reference's read, detect, gray and paste-back steps."""

        def __init__(self, models: ReferenceModels, upscale: int, clock: StageClock,
                     upscale_only_detection: bool = False) -> None:
            import facexlib.utils.face_restoration_helper as helper_module

            # facexlib's constructor loads (downloads) its own networks: hand it ours instead.
            with mock.patch.object(helper_module, "init_detection_model", return_value=models.detector), \
                    mock.patch.object(helper_module, "init_parsing_model", return_value=models.parser):
                super().__init__(upscale, face_size=FACE_SIZE, crop_ratio=(1, 1), det_model="retinaface_resnet50",
                                 save_ext="png", use_parse=True, device=models.device)
            self.upscale_factor = int(upscale)
            self.face_template = np.array(DLIB_TEMPLATE_AT_1024) / (1024 // FACE_SIZE)  # the faces are dlib's
            self.clock = clock
            self.upscale_only_detection = upscale_only_detection
            self.is_gray = False

        def read_image(self, img: np.ndarray) -> None:
            if np.max(img) > 256:  # 16-bit picture
                img = img / 65535 * 255
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            elif img.shape[2] == 4:
                img = img[:, :, 0:3]
            self.input_img = img
            self.is_gray = is_gray(img)
            short_side = min(img.shape[:2])
            if short_side < WORK_MIN_SIDE:
                factor = WORK_MIN_SIDE / short_side
                self.input_img = cv2.resize(img, (0, 0), fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)

        def get_face_landmarks_5(self, resize: int = DETECTION_SHORT_SIDE,
                                 eye_dist_threshold: float = EYE_DIST_THRESHOLD) -> int:
            height, width = self.input_img.shape[0:2]
            scale = resize / min(height, width)
            if self.upscale_only_detection:
                scale = max(1, scale)
            size = (int(width * scale), int(height * scale))
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            image = cv2.resize(self.input_img, size, interpolation=interpolation)
            with torch.no_grad():
                rows = self.face_det.detect_faces(image)
            if rows is None or len(rows) == 0:
                return 0
            rows = rows / scale
            for row in rows:
                # The reference's eye distance mixes coordinates ((y0 - y1), (x1 - x2)); kept as it is.
                if eye_dist_threshold is not None and np.linalg.norm([row[6] - row[8], row[7] - row[9]]) < eye_dist_threshold:
                    continue
                self.all_landmarks_5.append(row[5:15].reshape(5, 2).copy())
                self.det_faces.append(row[0:5])
            return len(self.all_landmarks_5)

        def add_restored_face(self, face: np.ndarray, input_face: np.ndarray | None = None) -> None:
            if self.is_gray:
                raise NotImplementedError("gray pictures are not part of this baseline")
            self.restored_faces.append(face)

        def _parse_mask(self, face: np.ndarray) -> np.ndarray:
            """The (512, 512) float64 parse mask of a restored face: one ParseNet forward, blurred twice."""
            face_input = cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)
            tensor = _to_network_input(face_input.astype("float32") / 255.0).unsqueeze(0).to(self.device)
            with torch.no_grad():
                out = self.face_parse(tensor)[0]
            labels = out.argmax(dim=1).squeeze().cpu().numpy()
            mask = np.zeros(labels.shape)
            for label, value in enumerate(PARSE_MASK_COLORMAP):
                mask[labels == label] = value
            kernel = (PARSE_BLUR_KERNEL, PARSE_BLUR_KERNEL)
            mask = cv2.GaussianBlur(cv2.GaussianBlur(mask, kernel, PARSE_BLUR_SIGMA), kernel, PARSE_BLUR_SIGMA)
            mask[:PARSE_BORDER, :] = 0
            mask[-PARSE_BORDER:, :] = 0
            mask[:, :PARSE_BORDER] = 0
            mask[:, -PARSE_BORDER:] = 0
            return mask / 255.0

        def paste_faces_to_input_image(self, save_path: str | None = None, upsample_img: np.ndarray | None = None,
                                       draw_box: bool = False, face_upsampler: object = None) -> np.ndarray:
            if upsample_img is not None or draw_box or face_upsampler is not None:
                raise NotImplementedError("only the default flags are part of this baseline")
            height, width = self.input_img.shape[:2]
            up = (int(width * self.upscale_factor), int(height * self.upscale_factor))  # (w_up, h_up)
            canvas = cv2.resize(self.input_img, up, interpolation=cv2.INTER_LINEAR)
            for face, inverse in zip(self.restored_faces, self.inverse_affine_matrices):
                if self.upscale_factor > 1:
                    inverse[:, 2] += 0.5 * self.upscale_factor  # in place, as the reference
                warped_face = cv2.warpAffine(face, inverse, up)
                square = cv2.warpAffine(np.ones(self.face_size, dtype=np.float32), inverse, up)
                eroded = cv2.erode(square, np.ones((2 * self.upscale_factor, 2 * self.upscale_factor), np.uint8))
                pasted = eroded[:, :, None] * warped_face
                edge = int(np.sum(eroded) ** 0.5) // 20
                centre = cv2.erode(eroded, np.ones((2 * edge, 2 * edge), np.uint8))
                soft = cv2.GaussianBlur(centre, (2 * edge + 1, 2 * edge + 1), 0)[:, :, None]
                with self.clock.stage("parse"):
                    parse_mask = self._parse_mask(face)
                parse = cv2.warpAffine(cv2.resize(parse_mask, self.face_size), inverse, up, flags=3)[:, :, None]
                lower = (parse < soft).astype("int")
                soft = parse * lower + soft * (1 - lower)
                canvas = soft * pasted + (1 - soft) * canvas
            return canvas.astype(np.uint16 if np.max(canvas) > 256 else np.uint8)

    return ReferenceFaceHelper


def make_helper(models: ReferenceModels, clock: StageClock, *, upscale: int = UPSCALE,
                upscale_only_detection: bool = False) -> Any:
    """The reference's face helper around ``models`` (see the module docstring)."""
    return _helper_class()(models, upscale, clock, upscale_only_detection)


# ------------------------------------------------------------------------------------------------
# The per-picture loop of inference_codeformer.py


def restore_face(models: ReferenceModels, crop: np.ndarray, w: float = FIDELITY_WEIGHT) -> np.ndarray:
    """One aligned BGR uint8 crop through CodeFormer as the reference calls it; BGR uint8 out."""
    tensor = _to_network_input(crop / 255.0).unsqueeze(0).to(models.device)
    with torch.no_grad():
        output = straightforward_forward(models.net, tensor, w, adain=True)
        # tensor2img(output, rgb2bgr=True, min_max=(-1, 1))
        image = output.squeeze(0).float().detach().cpu().clamp_(-1, 1)
        image = ((image + 1) / 2).numpy().transpose(1, 2, 0)
    return (cv2.cvtColor(image, cv2.COLOR_RGB2BGR) * 255.0).round().astype(np.uint8)


def imwrite(image: np.ndarray, path: Path) -> None:
    """basicsr's ``imwrite``: make the folder, ``cv2.imwrite``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def restore_picture(image: np.ndarray, basename: str, out_root: Path, helper: Any, models: ReferenceModels, *,
                    w: float = FIDELITY_WEIGHT) -> np.ndarray:
    """One picture (BGR uint8) as the reference's loop body: detect, align, restore, paste, write."""
    clock: StageClock = helper.clock
    helper.clean_all()
    with clock.stage("read"):
        helper.read_image(image)
    with clock.stage("detect"):
        helper.get_face_landmarks_5(resize=DETECTION_SHORT_SIDE, eye_dist_threshold=EYE_DIST_THRESHOLD)
    with clock.stage("align"):
        helper.align_warp_face()
    for crop in helper.cropped_faces:
        with clock.stage("restore"):
            restored = restore_face(models, crop, w)
        helper.add_restored_face(restored, crop)
    with clock.stage("paste"):
        helper.get_inverse_affine(None)
        final = helper.paste_faces_to_input_image()
    with clock.stage("write"):
        for index, (crop, restored) in enumerate(zip(helper.cropped_faces, helper.restored_faces)):
            imwrite(crop, out_root / "cropped_faces" / f"{basename}_{index:02d}.png")
            imwrite(restored, out_root / "restored_faces" / f"{basename}_{index:02d}.png")
        imwrite(final, out_root / "final_results" / f"{basename}.png")
    return final


def restore_picture_file(path: Path, out_root: Path, helper: Any, models: ReferenceModels, *,
                         w: float = FIDELITY_WEIGHT) -> np.ndarray:
    with helper.clock.stage("read"):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return restore_picture(image, path.stem, out_root, helper, models, w=w)


def restore_aligned_file(path: Path, out_root: Path, helper: Any, models: ReferenceModels, *,
                         w: float = FIDELITY_WEIGHT) -> np.ndarray:
    """``--has_aligned``: read, resize to 512, gray check, restore, write ``restored_faces/<name>.png``."""
    clock: StageClock = helper.clock
    helper.clean_all()
    with clock.stage("read"):
        image = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (FACE_SIZE, FACE_SIZE),
                           interpolation=cv2.INTER_LINEAR)
        helper.is_gray = is_gray(image)
    with clock.stage("restore"):
        restored = restore_face(models, image, w)
    helper.add_restored_face(restored, image)
    with clock.stage("write"):
        imwrite(restored, out_root / "restored_faces" / f"{path.stem}.png")
    return restored


def restore_video_file(src: Path, out_root: Path, helper: Any, models: ReferenceModels, *,
                       w: float = FIDELITY_WEIGHT, crf: int = VIDEO_CRF, preset: str = VIDEO_PRESET) -> Path:
    """The reference's video path: decode all, each frame as a picture (PNGs written), read back, encode."""
    import av

    clock: StageClock = helper.clock
    with clock.stage("decode"), av.open(str(src)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # the ffmpeg program decodes with threads
        fps = stream.average_rate or Fraction(24)
        frames = [_to_bgr(frame) for frame in container.decode(stream)]
    for index, frame in enumerate(frames):
        restore_picture(frame, f"{index:06d}", out_root, helper, models, w=w)
    with clock.stage("read back"):
        paths = sorted((out_root / "final_results").glob("*.png"))
        restored = [cv2.imread(str(path)) for path in paths]
    dst = out_root / f"{src.stem}.mp4"
    with clock.stage("encode"):
        encode_video(restored, dst, fps, crf=crf, preset=preset)
    return dst


def _to_bgr(frame: Any) -> np.ndarray:
    """A decoded frame as BGR uint8, converted as our video reader converts an untagged (BT.601) source."""
    from av.video.reformatter import Colorspace, Interpolation

    flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    return frame.reformat(format="bgr24", src_colorspace=Colorspace.ITU601, interpolation=flags).to_ndarray()


def encode_video(frames: list[np.ndarray], dst: Path, fps: Fraction, *, crf: int = VIDEO_CRF,
                 preset: str = VIDEO_PRESET) -> None:
    """BGR uint8 frames -> H.264 (libx264, yuv420p, BT.601 limited range) at a constant ``fps``."""
    import av
    from av.video.reformatter import ColorRange, Colorspace, Interpolation

    height, width = frames[0].shape[:2]
    flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND
    with av.open(str(dst), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, VIDEO_PIX_FMT
        stream.codec_context.time_base = 1 / Fraction(fps)
        stream.codec_context.options = {"crf": str(crf), "preset": preset}
        stream.codec_context.colorspace, stream.codec_context.color_range = AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(
                format=VIDEO_PIX_FMT, dst_colorspace=Colorspace.ITU601, dst_color_range=ColorRange.MPEG,
                interpolation=flags)
            frame.pts, frame.time_base = index, 1 / Fraction(fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
