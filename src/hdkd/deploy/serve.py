"""A small web app and HTTP API around a trained model: `hdkd serve`.

`create_app(classifier)` returns a FastAPI app that serves a page (drop or pick an image, see the predicted class,
the probability of every class and an explanation overlay) and its API: ``POST /api/predict``, ``GET /api/model``,
``GET /api/health``, documented at ``/openapi.json``. Everything the page needs is served by the app (no CDN, so no
Swagger UI either: it loads from one).

Uploads are hostile until decoded: the body is read in chunks and refused once over the limit (413), the type
comes from the magic bytes (JPEG, PNG, DICOM; else 415), the pixel count is read from the header before decoding
(decompression bombs: 413), a file that does not decode is 422. Nothing is written to disk, except a DICOM file,
which `read_dicom_frames` reads from a path inside a `tempfile.TemporaryDirectory` removed at once. Each error is
a JSON ``{"detail": "..."}``; the server keeps serving.

An image reaches the model as in training (`hdkd.evaluation.inference.fit_array`), so the page predicts what
`hdkd predict` predicts for the same file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pydicom
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from ..data.dicom import read_dicom_frames
from ..data.imageio import image_to_array, to_channels
from ..deploy.explain import explain_array
from ..evaluation.inference import Classifier, TorchClassifier, fit_array
from ..reporting.overlay import render_overlay
from ..version import __version__

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # 5000 x 5000: far above any scan here, far below what fills the memory
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around the file, allowed on top of the limit
MAX_FILENAME_CHARS = 255
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# (image uint8 at the model's size) -> PNG bytes of the explanation overlay, or None when there is none
Explainer = Callable[[np.ndarray], Optional[bytes]]


class PredictResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    predicted_class: str = Field(alias="class", description="the most probable class")
    probabilities: dict[str, float] = Field(
        description="probability of every class (calibrated when the model "
        "carries a temperature), in the model's class order"
    )
    overlay: Optional[str] = Field(
        description="the explanation overlay as a PNG data URL; null when the model has none (ONNX, or --no-explain)"
    )
    filename: str = Field(description="the uploaded file's name as the client gave it (display only)")


class ModelResponse(BaseModel):
    model_name: str
    classes: list[str]
    img_size: int = Field(description="images are resized to img_size x img_size")
    in_chans: int = Field(description="1 (grey) or 3 (RGB)")
    temperature: Optional[float] = Field(description="fitted on validation; null: uncalibrated")
    role: Optional[str]
    training_data: Optional[str]
    hdkd_version: str
    metrics: dict[str, Any] = Field(description="test metrics recorded with the model (may be empty)")
    explanations: bool = Field(description="whether predictions come with an explanation overlay")
    max_upload_bytes: int
    accepted_types: list[str]


class HealthResponse(BaseModel):
    status: str
    version: str


class ErrorResponse(BaseModel):
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed multipart body or no `file` field"},
    413: {"model": ErrorResponse, "description": "upload over the size limit, or too many pixels (decompression bomb)"},
    415: {
        "model": ErrorResponse,
        "description": "not a JPEG, PNG or DICOM file (judged from its content), or not multipart/form-data",
    },
    422: {"model": ErrorResponse, "description": "a JPEG, PNG or DICOM file that does not decode"},
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "a JPEG, PNG or DICOM image"}
                },
            }
        }
    },
}


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def sniff_type(data: bytes) -> Optional[str]:
    """'jpeg', 'png' or 'dicom' from the file's magic bytes (never its name), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[128:132] == b"DICM":
        return "dicom"
    return None


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk and refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"upload is over the limit of {limit:,} bytes")
    return bytes(body)


def parse_upload(body: bytes, content_type: str, max_file_bytes: int) -> Upload:
    """The ``file`` part of a multipart/form-data body, parsed in memory by python-multipart."""
    mime, options = parse_options_header(content_type)
    if mime != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(
            415,
            f"expected a multipart/form-data upload with a `file` field, got Content-Type {content_type or 'none'!r}",
        )
    parts: list[dict[str, Any]] = []
    header: dict[str, bytearray] = {}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def on_header_end() -> None:
        name = bytes(header.pop("field", b"")).decode("latin-1").lower()
        parts[-1]["headers"][name] = bytes(header.pop("value", b""))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(options[b"boundary"], callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(400, f"malformed multipart/form-data body ({exc})") from None
    files = [p for p in parts if _disposition(p)[b"name"] == b"file"] if parts else []
    if len(files) != 1:
        raise HTTPException(400, f"expected exactly one `file` field in the upload, got {len(files)}")
    part = files[0]
    if len(part["data"]) > max_file_bytes:
        raise HTTPException(413, f"upload of {len(part['data']):,} bytes is over the limit of {max_file_bytes:,} bytes")
    filename = _disposition(part).get(b"filename", b"").decode("utf-8", errors="replace")
    return Upload(filename=filename[:MAX_FILENAME_CHARS], data=bytes(part["data"]))


def _disposition(part: dict[str, Any]) -> dict[bytes, bytes]:
    _, options = parse_options_header(part["headers"].get("content-disposition", b"").decode("latin-1"))
    return {b"name": b"", **options}


def decode_upload(upload: Upload, channels: int, max_pixels: int) -> np.ndarray:
    """uint8 (H, W, channels) of an uploaded JPEG, PNG or DICOM (first frame); HTTPException 413/415/422 if not."""
    kind = sniff_type(upload.data)
    name = upload.filename or "upload"
    if kind is None:
        raise HTTPException(415, f"{name}: not a JPEG, PNG or DICOM file (judged from its content, not its name)")
    if kind == "dicom":
        return decode_dicom(upload.data, name, channels, max_pixels)
    try:
        with Image.open(io.BytesIO(upload.data), formats=("JPEG", "PNG")) as img:
            _check_pixels(name, img.width, img.height, 1, max_pixels)  # from the header, before decoding
            img.load()
            return image_to_array(img, channels)
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"{name}: refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise HTTPException(422, f"{name}: corrupt or unreadable {kind.upper()} image ({exc})") from None


def decode_dicom(data: bytes, name: str, channels: int, max_pixels: int) -> np.ndarray:
    """The first frame of a DICOM upload, read by `hdkd.data.dicom` from a file in a temporary folder."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many types for a malformed header; all mean "not readable"
        raise HTTPException(422, f"{name}: unreadable DICOM header ({exc})") from None
    _check_pixels(name, columns, rows, frames, max_pixels)
    with tempfile.TemporaryDirectory(prefix="hdkd-serve-") as folder:
        path = Path(folder) / "upload.dcm"
        path.write_bytes(data)
        try:
            images = read_dicom_frames(path)
        except Exception as exc:  # a hostile file may break the decoder anywhere; never the server
            raise HTTPException(422, f"{name}: unreadable DICOM ({str(exc).replace(str(path), name)})") from None
    if not images:
        raise HTTPException(422, f"{name}: the DICOM file holds no image frame")
    return to_channels(np.asarray(images[0], dtype=np.uint8), channels)


def _check_pixels(name: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    if width * height * frames > max_pixels:
        raise HTTPException(
            413,
            f"{name}: {width} x {height} pixels x {frames} frame(s) is over the limit of "
            f"{max_pixels:,} pixels (refused as a possible decompression bomb)",
        )


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def create_app(
    classifier: Classifier,
    explainer: Optional[Explainer] = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    allowed_hosts: Optional[Sequence[str]] = None,
    max_concurrent: int = 4,
) -> FastAPI:
    """The page and API for ``classifier``; ``explainer`` adds the overlay; ``allowed_hosts`` (Host header
    names) shuts out DNS-rebinding pages when serving on localhost; ``max_concurrent`` bounds the memory in use."""
    info = classifier.info
    app = FastAPI(
        title="hdkd serve",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        description=f"Predictions of {info.model_name} ({', '.join(info.class_names)}). "
        f"Research software, not a medical device.",
    )
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    busy = threading.BoundedSemaphore(max_concurrent)
    explain_lock = threading.Lock()  # explainers hook the model (Grad-CAM): one at a time

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def predict(upload: Upload) -> PredictResponse:
        with busy:
            image = fit_array(decode_upload(upload, info.in_chans, max_image_pixels), info)
            probabilities = classifier.probabilities([image])[0]
            overlay = None
            if explainer is not None:
                try:
                    with explain_lock:
                        png = explainer(image)
                    overlay = png_data_url(png) if png else None
                except Exception:  # the prediction stands without its overlay
                    log.exception("explanation failed for %r", upload.filename)
        named = {c: float(p) for c, p in zip(info.class_names, probabilities, strict=True)}
        return PredictResponse(
            predicted_class=info.class_names[int(np.argmax(probabilities))],
            probabilities=named,
            overlay=overlay,
            filename=upload.filename,
        )

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": UPLOAD_BODY},
        summary="Classify an uploaded image",
    )
    async def api_predict(request: Request) -> PredictResponse:
        body = await read_limited_body(request, max_upload_bytes + MULTIPART_OVERHEAD_BYTES)
        upload = parse_upload(body, request.headers.get("content-type", ""), max_upload_bytes)
        return await run_in_threadpool(predict, upload)

    @app.get("/api/model", response_model=ModelResponse, summary="The model and how it reads images")
    def api_model() -> ModelResponse:
        return ModelResponse(
            model_name=info.model_name,
            classes=list(info.class_names),
            img_size=info.img_size,
            in_chans=info.in_chans,
            temperature=info.temperature,
            role=info.role,
            training_data=info.training_data,
            hdkd_version=info.hdkd_version,
            metrics=dict(info.metrics),
            explanations=explainer is not None,
            max_upload_bytes=max_upload_bytes,
            accepted_types=["JPEG", "PNG", "DICOM"],
        )

    @app.get("/api/health", response_model=HealthResponse, summary="Liveness")
    def api_health() -> HealthResponse:
        return HealthResponse(status="ok", version=__version__)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one); OSError when it cannot listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def uvicorn_server(app: FastAPI, log_level: str = "info") -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "info"))


@contextlib.contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port of ``host``; yields the base URL (tests, benchmarks)."""
    sock = bind_socket(host, 0)
    server = uvicorn_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def build_explainer(classifier: Classifier) -> Optional[Explainer]:
    """The overlay of the explain module's first map for the predicted class; None for ONNX models."""
    if not isinstance(classifier, TorchClassifier):
        return None

    def explain(image):
        maps = explain_array(classifier, classifier.info, image)
        return render_overlay(image, next(iter(maps.values()))) if maps else None

    return explain
