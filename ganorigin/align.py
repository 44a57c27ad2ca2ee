"""Face detection and FFHQ-style alignment, so e4e sees faces framed the way it was trained.

Recipe (the one the FFHQ dataset was cropped with, re-implemented): dlib finds the face and its
68 landmarks; the eye centres and mouth corners define an oriented square whose centre sits
slightly below the eyes (a tenth of the way to the mouth), whose size grows with the larger of
twice the eye distance and 1.8 times the eye-to-mouth distance, and whose sides follow the tilt of
the face. That square ("quad") is resampled to an upright ``output_size`` image with PIL's
``Image.transform(..., QUAD)``; where it leaves the photo, the photo is mirrored outwards first.

dlib is optional: :func:`alignment_available` says whether it can be used, and :func:`align_face`
raises :class:`AlignmentUnavailableError` with the install command when it cannot.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from .errors import AlignmentUnavailableError

__all__ = [
    "AlignmentResult",
    "align_face",
    "alignment_available",
    "alignment_setting",
    "ffhq_quad",
    "quad_frame_iou",
]

OUTPUT_SIZE = 256  # e4e's input size: align straight to it, no 1024 px intermediate
DETECT_MAX_SIDE = 640  # faces are searched on a copy no larger than this (speed)
_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
_INSTALL_HINT = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"

# 68-point (iBUG 300-W) landmark indices.
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_MOUTH_LEFT, _MOUTH_RIGHT = 48, 54


@dataclass(frozen=True)
class AlignmentResult:
    """What alignment did for one image.

    ``image`` is the aligned crop (``None`` when no face was found); ``box`` the chosen face's
    detection box ``(left, top, right, bottom)`` and ``quad`` its crop corners (top-left,
    bottom-left, bottom-right, top-right), both in the input image's pixels.
    """

    image: Optional[Image.Image] = field(repr=False, compare=False)
    faces_found: int
    box: Optional[tuple] = None
    quad: Optional[tuple] = None
    reason: str = ""

    @property
    def used(self) -> bool:
        return self.image is not None


def alignment_available() -> bool:
    """True when dlib and the 68-point landmark model are installed."""
    return importlib.util.find_spec("dlib") is not None and _predictor_path() is not None


def alignment_setting(align: Optional[bool]) -> bool:
    """``align`` as given, or for None the default of inference and extraction alike: align when available."""
    return alignment_available() if align is None else bool(align)


def align_face(image: Image.Image, *, output_size: int = OUTPUT_SIZE) -> AlignmentResult:
    """Detect faces in an RGB image and FFHQ-align the largest one.

    Returns:
        One face: its aligned ``output_size`` crop. Several: the largest, with the count in
        ``faces_found``. None: ``image=None`` and a ``reason`` saying the whole image is used.

    Raises:
        AlignmentUnavailableError: dlib or the landmark model is not installed.
    """
    detector, predictor = _models()
    rgb = np.asarray(image.convert("RGB"))
    boxes = _detect(detector, rgb)
    if not boxes:
        return AlignmentResult(None, 0, reason="No face found; the whole image was analysed instead.")
    box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    landmarks = _landmarks(predictor, rgb, box)
    quad = ffhq_quad(landmarks)
    aligned = _render_quad(image.convert("RGB"), quad, output_size)
    if len(boxes) == 1:
        reason = "One face found and aligned."
    else:
        reason = f"{len(boxes)} faces found; the largest was aligned and analysed."
    return AlignmentResult(aligned, len(boxes), box=box, quad=tuple(map(tuple, quad.tolist())), reason=reason)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop square (4, 2) from 68 landmarks (x, y), corners TL, BL, BR, TR."""
    eye_left = landmarks[_LEFT_EYE].mean(axis=0)
    eye_right = landmarks[_RIGHT_EYE].mean(axis=0)
    eye_mid = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_mid = (landmarks[_MOUTH_LEFT] + landmarks[_MOUTH_RIGHT]) / 2
    eye_to_mouth = mouth_mid - eye_mid

    # Horizontal half-axis: the eye line, corrected by the eye-to-mouth direction turned 90 degrees,
    # so a face tilted one way or the other still gets an upright crop.
    half_x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    half_x /= np.hypot(*half_x)
    half_x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    half_y = np.array([-half_x[1], half_x[0]])  # half_x turned 90 degrees (image y points down)
    centre = eye_mid + eye_to_mouth * 0.1
    return np.stack([centre - half_x - half_y, centre - half_x + half_y, centre + half_x + half_y, centre + half_x - half_y])


def quad_frame_iou(quad, size: tuple) -> float:
    """Intersection over union of a crop quad with the full image frame ``size=(width, height)``.

    Rasterised on a grid of about 512 cells across the frame (accurate to ~0.5 %).
    """
    quad = np.asarray(quad, dtype=np.float64)
    width, height = size
    left, top = np.minimum(quad.min(axis=0), 0)
    right, bottom = np.maximum(quad.max(axis=0), (width, height))
    scale = 512 / max(width, height)
    canvas = (int(np.ceil((right - left) * scale)) + 1, int(np.ceil((bottom - top) * scale)) + 1)

    def mask(points) -> np.ndarray:
        m = Image.new("1", canvas, 0)
        ImageDraw.Draw(m).polygon([((x - left) * scale, (y - top) * scale) for x, y in points], fill=1)
        return np.asarray(m)

    frame = mask([(0, 0), (0, height), (width, height), (width, 0)])
    crop = mask(quad)
    return float((frame & crop).sum() / max((frame | crop).sum(), 1))


_lock = threading.Lock()
_loaded: Optional[tuple] = None


def _models() -> tuple:
    """dlib's HOG face detector and the 68-point shape predictor, loaded once per process."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = _predictor_path()
            if importlib.util.find_spec("dlib") is None or path is None:
                raise AlignmentUnavailableError(
                    f"Face alignment needs dlib and its 68-point landmark model; install them with "
                    f"`{_INSTALL_HINT}`, or turn alignment off (align=False)."
                )
            import dlib

            _loaded = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path)))
        return _loaded


def _predictor_path() -> Optional[Path]:
    # Located without importing face_recognition_models: its __init__ needs pkg_resources,
    # which current setuptools no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / _PREDICTOR_FILE
    return path if path.is_file() else None


def _detect(detector, rgb: np.ndarray) -> list:
    """Face boxes (left, top, right, bottom) in ``rgb``'s pixels, searched on a downscaled copy.

    A second pass at twice the resolution runs only when the first finds nothing, so small faces
    in large photos are still found without slowing the common case.
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(width, height))
    small = rgb if scale == 1.0 else np.asarray(Image.fromarray(rgb).resize((round(width * scale), round(height * scale)), Image.BILINEAR))
    with _lock:
        rects = detector(small, 0)
        if len(rects) == 0:
            rects = detector(small, 1)
    return [
        (r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale) for r in rects
    ]


def _landmarks(predictor, rgb: np.ndarray, box: tuple) -> np.ndarray:
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    with _lock:
        shape = predictor(rgb, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # (68, 2)


def _render_quad(image: Image.Image, quad: np.ndarray, output_size: int) -> Image.Image:
    """Resample ``quad`` of ``image`` to an upright ``output_size`` square.

    A large face is first box-shrunk by an integer factor (cheap anti-aliasing), the photo is
    mirrored outwards where the quad leaves it, and the quad is rendered at twice the output size
    and reduced with Lanczos.
    """
    quad = quad.copy()
    side = np.hypot(*(quad[3] - quad[0]))
    shrink = int(side / (2 * output_size))
    if shrink > 1:
        image = image.reduce(shrink)
        quad /= shrink
    pad = _outside_margins(quad, image.size)
    if any(pad):
        left, top, right, bottom = pad
        a = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="symmetric")
        image = Image.fromarray(a)
        quad += (left, top)
    render = 2 * output_size
    data = tuple(quad.flatten().tolist())
    out = image.transform((render, render), Image.Transform.QUAD, data, Image.Resampling.BILINEAR)
    return out.resize((output_size, output_size), Image.Resampling.LANCZOS)


def _outside_margins(quad: np.ndarray, size: tuple) -> tuple:
    """How many pixels (left, top, right, bottom) the quad reaches outside the image, capped at
    one mirror copy of the image."""
    width, height = size
    reach = (-quad[:, 0].min(), -quad[:, 1].min(), quad[:, 0].max() - width, quad[:, 1].max() - height)
    limits = (width - 1, height - 1, width - 1, height - 1)
    return tuple(min(int(np.ceil(r)) + 1, limit) if r > 0 else 0 for r, limit in zip(reach, limits))
