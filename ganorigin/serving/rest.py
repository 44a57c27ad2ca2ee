"""The original GANOrigin REST API (``POST /predict``, form field ``image`` or ``url``), plus ``GET /health``.

Clients of the original Flask server switch by changing only the base URL. Every error is
``{"error": "<message>"}``, never a traceback. ``POST /predict`` is guarded before its body is
read: at most ``GANORIGIN_REST_MAX_INFLIGHT`` requests at a time (past that a 503 with
``Retry-After``), and a body over the byte limit is refused on its ``Content-Length`` or, when
chunked, as soon as it passes the limit (413). ``/docs`` serves Swagger UI from this server, so
it works offline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Optional, Union

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import (GANOriginError, ImageTooLargeError, InvalidImageError, InvalidVideoError, ModelUnavailableError,
                      VideoTooLargeError)
from ..images import IMAGE_HEADER_BYTES, MAX_IMAGE_BYTES, image_too_large, is_still_image
from ..pipeline import check_threshold
from ..verdict import COMMFOR_THRESHOLD
from ..video import MAX_VIDEO_BYTES, is_video, video_too_large
from .redact import unavailable_text
from .service import ModelService
from .urls import fetch_image_bytes

logger = logging.getLogger(__name__)

DEFAULT_MAX_INFLIGHT = 4  # bodies of up to the byte limit each; a 2-vCPU Space analyses one at a time
RETRY_AFTER_S = 5
# The image plus its multipart framing (boundaries, part headers, the threshold field).
MAX_BODY_BYTES = MAX_IMAGE_BYTES + 64 * 1024
TOO_LARGE = image_too_large()
MAX_VIDEO_BODY_BYTES = MAX_VIDEO_BYTES + 64 * 1024
VIDEO_TOO_LARGE = video_too_large()
# The guarded routes: path -> (largest body, the 413 message).
BODY_LIMITS = {"/predict": (MAX_BODY_BYTES, TOO_LARGE), "/predict/video": (MAX_VIDEO_BODY_BYTES, VIDEO_TOO_LARGE)}
INTERNAL_ERROR = "Internal error; the server logged the details."
COMMFOR_THRESHOLD_FIELD = f"Community Forensics' threshold on its P(fake), 0 to 1 (default {COMMFOR_THRESHOLD:g})"
NO_VIDEO = "No video uploaded"
VIDEO_ON_IMAGE_ROUTE = ("This file is a video, not an image: use POST /predict/video with the video in the multipart "
                        "field 'video'.")
IMAGE_ON_VIDEO_ROUTE = ("This file is an image, not a video: use POST /predict with the image in the multipart "
                        "field 'image'.")


class Authentic(BaseModel):
    prediction: str
    confidence: float
    probabilities: dict[str, float]


class Attributed(Authentic):
    deepfake_score: float


class VideoAnswer(BaseModel):
    """:meth:`VideoPrediction.to_dict`: the clip's verdict, scores and vote, and one row per sampled frame."""

    verdict: dict
    fake_probability: float
    median_fake_probability: float
    quantile: float
    is_fake: bool
    threshold: float
    commfor_probability: Optional[float]
    commfor_threshold: float
    fake_frame_fraction: float
    commfor_frames: int
    attribution: str
    unknown: bool
    attribution_probabilities: dict[str, float]
    frames_analysed: int
    frames_judged: int
    face_note: str
    frames_without_face: list[float]
    decisive_frames: list[float]
    interval: float
    video: dict
    frames: list[dict]


class ErrorBody(BaseModel):
    error: str


class Health(BaseModel):
    status: str
    weights_loaded: bool
    step: Optional[str]
    error: Optional[str]
    load_seconds: Optional[float]
    weights: dict[str, str]
    test_weights: bool  # random weights from `ganorigin demo-weights`: every answer is meaningless
    threshold: Optional[float]
    device: Optional[str]
    versions: dict[str, str]


def _refused(error: GANOriginError) -> JSONResponse:
    """The answer to an input we cannot analyse: 413 over a limit, 422 unreadable, 503 no model."""
    if isinstance(error, (ImageTooLargeError, VideoTooLargeError)):
        return _error(413, str(error))
    if isinstance(error, ModelUnavailableError):
        return _error(503, unavailable_text(error))
    return _error(422, str(error))


def _is_image(file) -> bool:
    """Whether an upload refused as a video opens as a still image."""
    file.seek(0)
    return is_still_image(file.read(IMAGE_HEADER_BYTES))


def _thresholds(threshold: Optional[str], commfor_threshold: Optional[str]) -> tuple:
    """The form's thresholds as numbers (``None`` where not sent); a ValueError says what is wrong."""
    return tuple(None if value is None else check_threshold(value) for value in (threshold, commfor_threshold))


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    """The JSON error answer; the server log gets one line (no traceback: the client's problem)."""
    logger.info("REST %d: %s", status, message.splitlines()[0] if message else "")
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _PredictGate:
    """What reaches ``POST /predict`` and ``POST /predict/video``, decided on its headers before any
    byte of the body is read: at most ``max_in_flight`` requests at a time (from headers to answer;
    past that a 503 with ``Retry-After``), and no declared ``Content-Length`` over the route's
    limit in ``limits`` (413). A chunked body is cut off by the route's own ``max_body_size`` as it streams."""

    def __init__(self, app: ASGIApp, max_in_flight: int, limits: dict):
        self.app, self.max_in_flight, self.limits = app, max_in_flight, limits
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.limits:
            return await self.app(scope, receive, send)
        max_body, too_large = self.limits[scope["path"]]
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            return await _error(413, too_large, {"Connection": "close"})(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            busy = f"The server is busy ({self.max_in_flight} analyses in progress); retry in {RETRY_AFTER_S} s."
            return await _error(503, busy, {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"})(scope, receive, send)
        self.in_flight += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": ...}``: HTTP errors, invalid requests, and program faults (500)."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:  # a chunked body passed max_body_size: the rest is not read
            return _error(413, BODY_LIMITS.get(request.url.path, BODY_LIMITS["/predict"])[1], {"Connection": "close"})
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        # Starlette raises the exception again after this answer, so the server logs its traceback.
        return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body", "video") for e in exc.errors()):
            return _error(400, f"{NO_VIDEO}: send it in the multipart field 'video'.")
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if where in ("image", "video"):  # sent as a text field, not a file
            return _error(422, f"Send the {where} as a file in the multipart field '{where}' (curl -F {where}=@FILE).")
        if first.get("type") == "bool_parsing":
            return _error(422, f"{where} must be true or false.")
        return _error(422, f"Invalid request: {where or 'body'}: {first.get('msg', 'malformed')}")


def create_rest_app(service: ModelService) -> FastAPI:
    """A FastAPI app with ``/predict`` and ``/health`` over ``service``; mount the UI on it.

    CORS is off unless ``GANORIGIN_CORS_ORIGINS`` lists origins (comma-separated, or ``*``);
    ``GANORIGIN_REST_MAX_INFLIGHT`` (default 4) bounds concurrent ``POST /predict`` requests.
    """
    from .. import __version__

    # Swagger UI's assets come from this server; its validator badge would call out to the web.
    app = FastAPIOffline(title="GANOrigin", version=__version__, redoc_url=None,
                         description="Detect GAN-generated faces and name the GAN that made them.",
                         swagger_ui_parameters={"validatorUrl": None})
    origins = [o.strip() for o in os.environ.get("GANORIGIN_CORS_ORIGINS", "").split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    max_in_flight = int(os.environ.get("GANORIGIN_REST_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT))
    if max_in_flight < 1:
        raise ValueError(f"GANORIGIN_REST_MAX_INFLIGHT must be at least 1, got {max_in_flight}.")
    app.add_middleware(_PredictGate, max_in_flight=max_in_flight, limits=BODY_LIMITS)

    _add_error_handlers(app)

    errors = {code: {"model": ErrorBody} for code in (400, 413, 422, 500, 503)}

    @app.post("/predict", response_model=Union[Attributed, Authentic], responses=errors,
              summary="Analyse one image (multipart field 'image', or form field 'url')", max_body_size=MAX_BODY_BYTES)
    async def predict(request: Request, image: Optional[UploadFile] = File(None),
                      threshold: Optional[str] = Form(None, description="fake-probability threshold, 0 to 1"),
                      commfor_threshold: Optional[str] = Form(None, description=COMMFOR_THRESHOLD_FIELD),
                      url: Optional[str] = Form(None, description="instead of 'image': a public http(s) image URL"),
                      extended: bool = Form(False, description="add both detectors, the overall verdict, the "
                                                               "degradation gate, alignment and provenance")):
        """The original JSON: ``Authentic Image`` with Real/Fake probabilities, or the attributed GAN.
        With ``extended=true``, the original keys plus ``detectors``, ``verdict``, ``degradation``,
        ``alignment`` and ``provenance`` (see ``Prediction.to_dict``)."""
        if image is None and not url:
            return _error(400, "No image uploaded")
        if len((await request.form()).getlist("image")) > 1:
            return _error(422, "Send one image per request, in the multipart field 'image'.")
        if image is not None and url:
            return _error(422, "Send either the image file or its url, not both.")
        try:
            threshold, commfor_threshold = _thresholds(threshold, commfor_threshold)
        except ValueError as e:
            return _error(422, str(e))
        try:
            if url:
                data = await run_in_threadpool(fetch_image_bytes, url)
            else:
                data = await image.read(MAX_IMAGE_BYTES + 1)
                if is_video(data[:16]):
                    return _error(422, VIDEO_ON_IMAGE_ROUTE)
                if len(data) > MAX_IMAGE_BYTES:
                    return _error(413, TOO_LARGE)
            result = await run_in_threadpool(service.predict, data, threshold)
        except (InvalidImageError, ModelUnavailableError) as e:
            return _refused(e)
        if commfor_threshold is not None:
            result = replace(result, commfor_threshold=commfor_threshold)
        if extended:  # past the response model, which holds the original keys only
            return JSONResponse(jsonable_encoder(result.to_dict(extended=True)))
        return result.to_dict()

    @app.post("/predict/video", response_model=VideoAnswer, responses=errors, max_body_size=MAX_VIDEO_BODY_BYTES,
              summary="Analyse a video clip frame by frame (multipart field 'video')")
    async def predict_video(request: Request, video: UploadFile = File(...),
                            threshold: Optional[str] = Form(None, description="fake-probability threshold, 0 to 1"),
                            commfor_threshold: Optional[str] = Form(None, description=COMMFOR_THRESHOLD_FIELD)):
        """The clip's verdict (over the frames with a face), its scores and attribution, and one row per sampled frame."""
        if len((await request.form()).getlist("video")) > 1:
            return _error(422, "Send one video per request, in the multipart field 'video'.")
        try:
            threshold, commfor_threshold = _thresholds(threshold, commfor_threshold)
        except ValueError as e:
            return _error(422, str(e))
        try:  # the upload is spooled to a temporary file by the server; frames are decoded from it as they come
            result = await run_in_threadpool(service.predict_video, video.file, threshold)
        except (InvalidVideoError, ModelUnavailableError) as e:
            if type(e) is InvalidVideoError and await run_in_threadpool(_is_image, video.file):
                return _error(422, IMAGE_ON_VIDEO_ROUTE)
            return _refused(e)
        if commfor_threshold is not None:
            result = result.with_threshold(result.threshold, commfor_threshold)
        return result.to_dict()

    @app.api_route("/predict", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def predict_needs_post():
        return _error(405, "Use POST /predict with the image in the multipart field 'image'.", {"Allow": "POST"})

    @app.api_route("/predict/video", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def predict_video_needs_post():
        return _error(405, "Use POST /predict/video with the video in the multipart field 'video'.", {"Allow": "POST"})

    @app.get("/health", response_model=Health, summary="Whether the weights are loaded, their sources, versions")
    def health():
        return service.health()

    return app
