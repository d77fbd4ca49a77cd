"""``toolbox serve``: an HTTP endpoint (FastAPI + uvicorn) that answers with the promoted model.

- ``POST /predict``: one or more image files (multipart/form-data, any field name; ``?top_k=``)
  -> ``{"step": k, "predictions": [{"file": name, "top": [{"class": c, "probability": p}, ...]}]}``.
- ``GET /health``: ``{"status": "ok", "step": k}``.
- ``GET /model``: the step, file, arch and classes served, and ``serve/history.json``'s promotion
  time and gate numbers.

The model follows ``RUN/serve/current.pt`` between requests (:class:`~toolbox.deploy.live_model.LiveModel`).
A malformed image gets 400, a body over ``--max-upload-mb`` 413 (refused while it arrives), both
with one sentence in ``detail``. SIGTERM or Ctrl-C stops the server after the requests in flight (exit code 0).
"""

from __future__ import annotations

import logging
import re
import signal
import socket
from pathlib import Path
from typing import Any

import numpy as np
import python_multipart  # noqa: F401 - request.form() needs it; missing, every upload would read as "not multipart"
import torch
from fastapi import FastAPI, HTTPException, Request  # module level: FastAPI reads the annotations here
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from toolbox.deploy.live_model import LiveModel, top_k
from toolbox.deploy.predictor import ImageInputError
from toolbox.errors import UsageError

log = logging.getLogger("toolbox")
MAX_TOP_K = 100
DRAIN_BYTES = 256 * 2**20  # past this, an oversized upload is cut off without reading it to its end


class UploadLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app reads it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(receive, send)
        chunks, size, more = [], 0, True
        while more:  # read (at most limit + one chunk) so a chunked body is bounded too
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._refuse(receive, send, more)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, receive: Any, send: Any, more: bool = True) -> None:
        """Answer 413 after reading and dropping the rest of the body (up to ``DRAIN_BYTES``), so
        that a client still sending gets the answer rather than a broken pipe."""
        drained = 0
        while more and drained < DRAIN_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        megabytes = self.limit / 2**20
        response = JSONResponse({"detail": f"The upload is larger than the server's limit of {megabytes:g} MB; "
                                           "send smaller or fewer images (or start it with a larger --max-upload-mb)."},
                                status_code=413, headers={"connection": "close"})
        await response({"type": "http"}, None, send)


def predict(live: LiveModel, files: list[tuple[str, bytes]], k: int) -> dict[str, Any]:
    """The answer of the model served now for ``files`` (name, bytes); ``ValueError`` names a bad image."""
    loaded = live.get()
    predictor = loaded.predictor
    pixels = []
    for name, blob in files:
        try:
            pixels.append(predictor.pixels(blob))
        except ImageInputError as exc:
            found = re.search(r"\((.*)\); pass", str(exc))  # the decoder's reason, without object addresses
            reason = re.sub(r"\s*<[^>]*>", "", found.group(1) if found else "it does not decode")[:100].rstrip(".")
            raise ValueError(f"{name} is not an image the server can decode ({reason}); send PNG or JPEG files.") from None
    probabilities = torch.softmax(predictor.logits(np.stack(pixels)), dim=1).tolist()
    return {"step": loaded.step,
            "predictions": [{"file": name, "top": top_k(p, predictor.classes, k)} for (name, _), p in zip(files, probabilities)]}


def create_app(live: LiveModel, max_upload_bytes: int) -> Any:
    """The FastAPI app over ``live`` (wrapped in the upload limit)."""
    app = FastAPI(title="toolbox serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "query") or "the request"
        return JSONResponse({"detail": f"{where} is not valid ({first.get('msg', 'bad value')}); "
                                       "e.g. /predict?top_k=3."}, status_code=400)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "step": live.get().step}

    @app.get("/model")
    def model() -> dict[str, Any]:
        loaded = live.get()
        history = live.history()
        promoted = history if history.get("step") == loaded.step else {}
        return {"step": loaded.step, "path": str(loaded.path), "classes": list(loaded.predictor.classes),
                "promoted_at": promoted.get("promoted_at"),
                "gate": {k: v for k, v in promoted.items() if k not in ("step", "promoted_at")}}

    @app.post("/predict")
    async def predict_files(request: Request, top_k: int = 5) -> dict[str, Any]:
        if not 1 <= top_k <= MAX_TOP_K:
            raise HTTPException(400, f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}.")
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - a body that is not multipart form data
            raise HTTPException(400, "The request is not multipart/form-data; send the images as file fields, "
                                     "e.g. curl -F file=@image.png .../predict.") from None
        files = [(item.filename or field, await item.read()) for field, item in form.multi_items()
                 if isinstance(item, UploadFile)]
        if not files:
            raise HTTPException(400, "The request holds no file; send one or more images as file fields, "
                                     "e.g. curl -F file=@image.png .../predict.")
        try:
            return await run_in_threadpool(predict, live, files, top_k)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    return UploadLimit(app, max_upload_bytes)


def check_port(host: str, port: int) -> None:
    """Refuse a port that is out of range or already taken, before loading anything."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not a TCP port; pass one between 1 and 65535, e.g. --port 8000.")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"Cannot listen on {host}:{port} ({exc.strerror}); pass another --port or --host.") from None


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 16.0,
          threads: int | None = None, announce: Any = print) -> None:
    """Serve ``run_dir``'s promoted model on ``host:port`` until SIGTERM / Ctrl-C (see the module docstring)."""
    import uvicorn

    if not max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb must be positive, got {max_upload_mb}.")
    check_port(host, port)
    if threads:
        torch.set_num_threads(threads)
    live = LiveModel(run_dir)
    app = create_app(live, int(max_upload_mb * 2**20))
    announce(f"serving {live.get().path} (step {live.get().step}) on http://{host}:{port} "
             "(POST /predict, GET /health, GET /model); it follows serve/current.pt; SIGTERM or Ctrl-C stops it")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="off")
    # uvicorn stops on SIGTERM / SIGINT, then raises the signal again under the handler it found:
    # quiet ones, so that a stop asked for ends the command normally (exit code 0)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
