"""The original GANOrigin REST API (``POST /predict``, form field ``image``), plus ``GET /health``.

Clients of the original Flask server switch by changing only the base URL. Every error is
``{"error": "<message>"}`` with a 4xx/503 status, never a traceback.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ImageTooLargeError, InvalidImageError
from .images import MAX_IMAGE_BYTES
from .service import ModelService, ModelUnavailableError


class Authentic(BaseModel):
    prediction: str
    confidence: float
    probabilities: dict[str, float]


class Attributed(Authentic):
    deepfake_score: float


class ErrorBody(BaseModel):
    error: str


class Health(BaseModel):
    status: str
    weights_loaded: bool
    error: Optional[str]
    load_seconds: Optional[float]
    weights: dict[str, str]
    threshold: Optional[float]
    device: Optional[str]
    versions: dict[str, str]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_rest_app(service: ModelService) -> FastAPI:
    """A FastAPI app with ``/predict`` and ``/health`` over ``service``; mount the UI on it.

    CORS is off unless ``GANORIGIN_CORS_ORIGINS`` lists origins (comma-separated, or ``*``).
    """
    from . import __version__

    app = FastAPI(title="GANOrigin", version=__version__,
                  description="Detect GAN-generated faces and name the GAN that made them.")
    origins = [o.strip() for o in os.environ.get("GANORIGIN_CORS_ORIGINS", "").split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body", "image") for e in exc.errors()):
            return _error(400, "No image uploaded")
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"Invalid request: {where or 'body'}: {first.get('msg', 'malformed')}")

    errors = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    @app.post("/predict", response_model=Union[Attributed, Authentic], responses=errors,
              summary="Analyse one image (multipart field 'image')")
    async def predict(image: UploadFile = File(...), threshold: Optional[float] = Form(None, ge=0.0, le=1.0)):
        """The original JSON: ``Authentic Image`` with Real/Fake probabilities, or the attributed GAN."""
        data = await image.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            return _error(413, f"The file is larger than the {MAX_IMAGE_BYTES / 2**20:g} MiB limit.")
        try:
            result = await run_in_threadpool(service.predict, data, threshold)
        except ImageTooLargeError as e:
            return _error(413, str(e))
        except InvalidImageError as e:
            return _error(422, str(e))
        except ModelUnavailableError as e:
            return _error(503, str(e))
        return result.to_dict()

    @app.get("/health", response_model=Health, summary="Whether the weights are loaded, their sources, versions")
    def health():
        return service.health()

    return app
