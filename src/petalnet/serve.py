"""Serve a trained classifier over HTTP: a JSON API and a one-page web app.

``petalnet serve CHECKPOINT`` runs :func:`create_app` under uvicorn; embed the same app in
your own ASGI application with ``app.mount("/flowers", create_app(clf))``. It is built on
Starlette (the small ASGI toolkit FastAPI itself is built on: routing, multipart parsing and
a test client, without a schema layer petalnet does not need) and uvicorn, installed by the
``[serve]`` extra.

Endpoints:

- ``GET /health`` — ``{"status": "ok"}`` once the model is loaded.
- ``GET /model`` — backbone, classes, names, calibration and training metrics.
- ``POST /predict?topk=5`` — multipart form field ``file``: the photo. Answers
  ``{"predictions": [{"label", "class_id", "probability"}, ...], "unknown", "novelty"}``.
- ``GET /`` — a page to pick or drop a photo and see its top-k chart (no CDN, works offline).

Safety: uploads above ``max_upload_bytes`` are refused with 413 before they are parsed;
non-images, truncated files and decompression bombs get 415/400/413 with a message, never
500; uploads are decoded in memory by the same reader as files (no client-supplied name ever
touches the file system); decoding and inference run in a worker thread, one request at a
time, so the event loop keeps serving.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, MutableMapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from petalnet._version import __version__
from petalnet.errors import ImageReadError, ImageTooLargeError, NotAnImageError, PetalnetError
from petalnet.results import check_topk

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from petalnet.classifier import FlowerClassifier

__all__ = ["MAX_TOPK", "MAX_UPLOAD_BYTES", "create_app", "model_info"]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Default upload limit (20 MB)."""
MAX_TOPK = 20
"""Largest ``topk`` a request may ask for."""

_Message = MutableMapping[str, Any]


class _TooLarge(Exception):
    """The request body is over the limit."""


def model_info(clf: FlowerClassifier) -> dict[str, Any]:
    """What ``GET /model`` answers: the model's identity, classes and measured quality.

    Args:
        clf: A fitted classifier.

    Returns:
        JSON-compatible facts about the model.
    """
    model = clf.fitted_model()
    kept = model.training.best_epoch
    best: dict[str, Any] = dict(model.validated_history[kept - 1]) if kept else {}
    cal = model.calibration
    names = model.category_names or {}
    return {
        "petalnet_version": __version__,
        "backbone": model.backbone.meta.name,
        "classes": list(model.classes),
        "names": [names.get(c, c) for c in model.classes],
        "n_train": model.n_train,
        "best_epoch": model.training.best_epoch,
        "valid_accuracy": _finite(best.get("valid_accuracy")),
        "calibration": {
            "temperature": cal.temperature,
            "novelty_score": cal.score,
            "unknown_threshold": cal.threshold,
            "target_known_recall": cal.target_recall,
            **{k: _finite(v) for k, v in cal.metrics.items()},
        },
        "tta": clf.tta,
        "device": str(clf.device_),
    }


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def create_app(
    clf: FlowerClassifier, *, max_upload_bytes: int = MAX_UPLOAD_BYTES, topk: int = 5
) -> Starlette:
    """The ASGI app serving ``clf`` (see the module docs for the endpoints).

    Args:
        clf: A fitted classifier; it is used from one worker thread at a time.
        max_upload_bytes: Largest request body accepted (413 above).
        topk: Predictions per photo when the request does not say.

    Returns:
        A Starlette application.

    Raises:
        PetalnetError: Starlette or python-multipart is not installed.
        NotFittedError: ``clf`` is not fitted.
    """
    try:
        import anyio
        from starlette.applications import Starlette
        from starlette.responses import HTMLResponse, JSONResponse
        from starlette.routing import Route
    except ModuleNotFoundError:
        raise PetalnetError("Serving needs Starlette: pip install 'petalnet[serve]'.") from None
    info = model_info(clf)  # also raises NotFittedError now, not at the first request
    predictor = clf.predictor_
    one_at_a_time = anyio.CapacityLimiter(1)
    page = resources.files("petalnet").joinpath("serve_page.html").read_text(encoding="utf-8")

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def model(request: Request) -> Response:
        return JSONResponse(info)

    async def index(request: Request) -> Response:
        return HTMLResponse(page.replace("__TOPK__", str(topk)))

    async def predict(request: Request) -> Response:
        try:
            k = check_topk(request.query_params.get("topk", topk), most=MAX_TOPK)
        except ValueError as exc:
            return error(400, str(exc))
        try:
            body = await _read_body(request, max_upload_bytes)
        except _TooLarge:
            return error(413, f"upload larger than {max_upload_bytes:,} bytes")
        try:
            form = await _replay(request, body).form(max_files=1, max_fields=10)
        except Exception:  # malformed multipart
            return error(400, "send the photo as multipart/form-data field 'file'")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return error(400, "send the photo as multipart/form-data field 'file'")
        data = await upload.read()
        name = upload.filename or "upload"
        try:  # decoded in the worker thread, by the same reader as files (draft JPEG decoding)
            top = await anyio.to_thread.run_sync(
                lambda: predictor.top_k([data], topk=k)[0], limiter=one_at_a_time
            )
        except ImageTooLargeError:
            return error(413, f"{name}: too many pixels for one photo (a decompression bomb?)")
        except NotAnImageError:
            return error(415, f"{name}: not a readable image")
        except ImageReadError:
            return error(400, f"{name}: not a readable image")
        return JSONResponse(
            {
                "predictions": [
                    {"label": p.label, "class_id": p.class_id, "probability": p.probability}
                    for p in top
                ],
                "unknown": top.unknown,
                "novelty": _finite(top.novelty),
            }
        )

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/model", model),
        Route("/predict", predict, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is over ``limit`` (by header or by counting)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(request: Request, body: bytes) -> Request:
    """The same request, its body read again from memory (for the form parser)."""
    from starlette.requests import Request

    sent = False

    async def receive() -> _Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def run(
    clf: FlowerClassifier,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    log: Callable[[str], object] = print,
) -> None:
    """Serve ``clf`` with uvicorn until interrupted.

    Args:
        clf: A fitted classifier.
        host: Interface to bind (``0.0.0.0`` exposes it to the network).
        port: TCP port.
        max_upload_bytes: Largest upload accepted.
        log: Where the start-up line goes.

    Raises:
        PetalnetError: uvicorn or Starlette is not installed.
    """
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise PetalnetError("Serving needs uvicorn: pip install 'petalnet[serve]'.") from None
    from petalnet.pipeline import describe_tta

    app = create_app(clf, max_upload_bytes=max_upload_bytes)
    name = json.dumps(clf.backbone_.meta.name)
    log(f"serving {name} on http://{host}:{port}/ ({describe_tta(clf.tta)}; Ctrl-C stops)")
    # info: one access line per request (client, method, path, status), as servers print
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
