"""The local web page and its JSON API: photos in; labels, cat or dog, "not a pet" and Grad-CAM out."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import python_multipart  # noqa: F401  (Starlette parses uploads with it: checked at start, not at the first upload)
import torch
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .cache import square_or_reason
from .checkpoint import describe, flip_tta_of, load_checkpoint, task_of, temperature_of
from .errors import UserError
from .explain import GradCAM, heat_overlay, upsample
from .metrics import epoch_rows
from .predict import PetClassifier, stack_readable
from .transforms import centre_crop

MAX_UPLOAD_BYTES = 32 * 2**20  # per request: a 48-megapixel phone JPEG fits; a larger body gets 413
MAX_FILES = 64  # photos per request
MAX_PIXELS_PER_REQUEST = 200_000_000  # decoded pixels a request may ask for (four 48-megapixel photos); past it 413
# uploads read or answered at once; past it 503 with Retry-After, before the body is read: the server's memory holds
# at most this many request bodies (uploads past 1 MiB are spooled to disk while they arrive)
MAX_IN_FLIGHT = 8
RETRY_AFTER_SECONDS = 1
STATIC = Path(__file__).with_name("static")


class PhotoService:
    """The trained classifier behind the API, loaded and run on one thread of its own, in arrival order; predict
    requests that wait together share forward passes. A forward pass already uses every core; and on 2 CPU cores a
    second thread running torch made every pass about half as slow again (each thread gets its own OpenMP team,
    which compete), and the server's memory grew with each new thread that ran the network (glibc gives each its
    own heap). One thread also means one photo of up to 89 megapixels decoded at a time, however many requests
    wait: each is cut to the square the network sees before the next."""

    def __init__(self, checkpoint: Path, device: str = "auto"):
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="network")
        self.worker.submit(self._load, checkpoint, device).result()
        self.waiting, self.lock = [], threading.Lock()  # predict requests not yet through the network

    def _load(self, checkpoint: Path, device: str) -> None:
        ckpt = load_checkpoint(checkpoint)
        self.classifier = PetClassifier.from_loaded(ckpt, device)
        self.gradcam = GradCAM(self.classifier.model.requires_grad_(False))  # gradients of activations, not weights
        self.info = model_info(checkpoint, ckpt)

    async def run(self, work, *args):
        """`work(*args)` on the service's thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, work, *args)

    def decode(self, name: str, data: bytes) -> tuple[str, torch.Tensor | str]:
        """(name, the uint8 square [3, R, R] the network sees) or (name, why the bytes are not a readable photo)."""
        if not data:
            return name, "empty file (0 bytes)"
        return name, square_or_reason(io.BytesIO(data), self.classifier.preprocessing)  # the name is never opened

    async def predict(self, uploads: list[tuple[str, bytes]], top_k: int) -> list[dict]:
        """One `predict --json` entry per upload, in upload order; unreadable ones get an error entry.

        Requests that wait while the network is busy go through it together: their photos share forward passes.
        """
        check_pixels(uploads)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        with self.lock:
            self.waiting.append((uploads, top_k, answer, loop))
        self.worker.submit(self._predict_waiting)  # the first of these to run takes every waiting request
        return await answer

    def _predict_waiting(self) -> None:
        """Every waiting request's photos through the network in batches; each request's entries to its future."""
        with self.lock:
            requests, self.waiting = self.waiting, []
        if not requests:
            return
        try:
            decoded = [self.decode(name, data) for uploads, *_ in requests for name, data in uploads]
            top_k, size, predictions = max(r[1] for r in requests), self.classifier.batch_size, []
            for start in range(0, len(decoded), size):
                predictions += self.classifier.scored(*stack_readable(decoded[start : start + size]), top_k)
            for uploads, k, answer, loop in requests:
                mine, predictions = predictions[: len(uploads)], predictions[len(uploads) :]
                entries = [replace(p, labels=p.labels[:k]).as_dict() for p in mine]
                loop.call_soon_threadsafe(settle, answer, entries, None)
        except Exception as e:  # each waiting request fails with it, as it would alone
            for *_, answer, loop in requests:
                loop.call_soon_threadsafe(settle, answer, None, e)

    def explain(self, name: str, data: bytes, class_name: str | None) -> tuple[bytes, str, float]:
        """(PNG of the Grad-CAM overlay on the square the network sees, its class, that class's probability)."""
        c = self.classifier
        if class_name is not None and class_name not in c.class_names:
            raise HTTPException(400, f"unknown class {class_name!r}; the model knows: {', '.join(c.class_names)}")
        _, square = self.decode(name, data)
        if isinstance(square, str):
            raise HTTPException(400, f"{name}: {square}")
        probs = c._square_outputs(square[None])[0][0]  # as predict reports them: temperature, flip TTA
        k = c.class_names.index(class_name) if class_name else int(probs.argmax())
        cam, _ = self.gradcam(c.preprocessing.eval_batch(square[None].to(c.device)), torch.tensor([k]).to(c.device))
        crop = c.preprocessing.crop
        overlay = heat_overlay(centre_crop(square, crop), upsample(cam[0].cpu(), crop))
        png = io.BytesIO()
        Image.fromarray(overlay.permute(1, 2, 0).numpy()).save(png, "PNG")
        return png.getvalue(), c.class_names[k], float(probs[k])


def check_pixels(uploads: list[tuple[str, bytes]]) -> None:
    """413 where a request's photos hold more pixels than one request may have decoded (headers only: no pixels
    are decoded here); unreadable ones count nothing and get their own error entry later."""
    total = 0
    for _, data in uploads:
        try:
            with Image.open(io.BytesIO(data)) as img:
                total += img.width * img.height
        except Exception:  # not an image, or a bomb: the decode says so for that photo
            continue
    if total > MAX_PIXELS_PER_REQUEST:
        raise HTTPException(413, f"the photos hold {total:,} pixels, over the limit of {MAX_PIXELS_PER_REQUEST:,} "
                                 "per request; send them in several requests")


def settle(answer: asyncio.Future, result, error: BaseException | None) -> None:
    """Give a waiting request its result or error (on its event loop), unless it has gone meanwhile."""
    if answer.done():  # the client disconnected and its request was cancelled
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)


def model_info(checkpoint: Path, ckpt: dict) -> dict:
    """What the page shows about the model: task, classes, accuracy from its run, and the run's learning curve."""
    run = checkpoint.parent
    summary = read_json(run / "summary.json")
    if summary and Path(summary.get("checkpoint", "")).name == checkpoint.name and "test_accuracy" in summary:
        accuracy = {"split": "test", "value": summary["test_accuracy"], "photos": summary.get("photos", {}).get("test")}
    elif (ckpt.get("metrics") or {}).get("val_accuracy") is not None:
        accuracy = {"split": "validation", "value": ckpt["metrics"]["val_accuracy"], "photos": None}
    else:
        accuracy = None
    try:
        rows = epoch_rows(run / "metrics.jsonl")
    except (OSError, ValueError):  # a checkpoint without its run folder, or a damaged file: no curve
        rows = []
    curve = [{k: row.get(k) for k in ("epoch", "train_loss", "val_loss", "val_accuracy")} for row in rows]
    return {"checkpoint": f"{run.name}/{checkpoint.name}", "description": describe(ckpt), "model": ckpt["model_name"],
            "task": task_of(ckpt), "class_names": ckpt["class_names"], "species_of": ckpt.get("species_of") or None,
            "image_size": ckpt["preprocessing"]["crop"], "flip_tta": flip_tta_of(ckpt),
            "temperature": temperature_of(ckpt), "not_a_pet": ckpt.get("imagenet_stages") is not None,
            "accuracy": accuracy, "curve": curve, "max_upload_bytes": MAX_UPLOAD_BYTES, "max_files": MAX_FILES}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


async def uploaded_files(request: Request) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The request's `file` uploads as (file name, bytes), in upload order, and its plain form fields."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "send photos as multipart/form-data, one 'file' field per photo")
    async with request.form(max_files=MAX_FILES, max_fields=16) as form:
        files = form.getlist("file")
        if not files or not all(isinstance(f, UploadFile) for f in files):
            raise HTTPException(400, "no photo: send each one as a 'file' field of multipart/form-data")
        uploads = [(f.filename or "upload", await f.read()) for f in files]
        return uploads, {k: v for k, v in form.items() if isinstance(v, str)}


def create_app(service: PhotoService) -> RequestLimits:
    """The ASGI app: the page at /, its files under /static/, the JSON API under /api/."""

    async def predict(request: Request) -> JSONResponse:
        uploads, fields = await uploaded_files(request)
        top_k = fields.get("top_k", request.query_params.get("top_k", "5"))
        if not (top_k.isascii() and top_k.isdigit()) or int(top_k) < 1:  # "²".isdigit() is True
            raise HTTPException(400, f"top_k must be a whole number, at least 1 (got {top_k!r})")
        return JSONResponse(await service.predict(uploads, int(top_k)))

    async def explain(request: Request) -> Response:
        uploads, fields = await uploaded_files(request)
        if len(uploads) != 1:
            raise HTTPException(400, f"explain takes one photo, not {len(uploads)}")
        check_pixels(uploads)
        png, label, probability = await service.run(service.explain, *uploads[0], fields.get("class"))
        # headers are latin-1: the class name (any script) is sent percent-encoded UTF-8, as in a URL
        return Response(png, media_type="image/png",
                        headers={"X-Class": quote(label, safe=""), "X-Probability": f"{probability:.6f}"})

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(service.info)

    async def health(request: Request) -> JSONResponse:
        info = service.info
        return JSONResponse({"status": "ok", "model": info["model"], "classes": len(info["class_names"])})

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    routes = [Route("/", page), Route("/api/predict", predict, methods=["POST"]),
              Route("/api/explain", explain, methods=["POST"]), Route("/api/model", model),
              Route("/api/health", health), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return RequestLimits(Starlette(routes=routes, exception_handlers={HTTPException: error}), MAX_UPLOAD_BYTES)


class RequestLimits:
    """ASGI wrapper bounding what clients can make the server hold: a request body over `max_bytes` gets 413 (at
    once when its Content-Length says so, or as soon as that many bytes of a body without one have arrived), and an
    upload past `max_in_flight` uploads at once gets 503 with Retry-After before its body is read."""

    def __init__(self, app, max_bytes: int, max_in_flight: int = MAX_IN_FLIGHT):
        self.app, self.limit, self.max_in_flight, self.in_flight = app, max_bytes, max_in_flight, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            too_large = JSONResponse({"error": self.message(length.decode("latin-1"))}, status_code=413)
            return await too_large(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            busy = JSONResponse({"error": f"busy: {self.in_flight} uploads in progress; try again in a moment"},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return await busy(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # raised inside the route: its error handler answers 413
                raise HTTPException(413, self.message(f"more than {received:,}"))
            return message

        self.in_flight += 1
        try:
            await self.app(scope, counted, send)
        finally:
            self.in_flight -= 1

    def message(self, size: str) -> str:
        return f"the upload ({size} bytes) is over the limit of {self.limit // 2**20} MiB per request"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (0: any free port) and listening, or a one-line UserError."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host}: {e.strerror}") from None
    # protocol TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say so; with it on, every
    # answer's body waited ~40 ms for the client's delayed acknowledgement of its headers
    listener = socket.socket(family, kind, protocol)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(128)  # connections wait from now on, while the model loads
    except OSError as e:
        listener.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return listener


def serve(checkpoint: Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> None:
    """Load the checkpoint, listen on host:port (0: any free port) and serve until Ctrl+C."""
    listener = listening_socket(host, port)
    service = PhotoService(checkpoint, device)
    ip, port = ipaddress.ip_address(listener.getsockname()[0]), listener.getsockname()[1]
    shown = "localhost" if ip.is_unspecified else f"[{host}]" if ip.version == 6 and host == str(ip) else host
    print(f"serving {checkpoint} ({service.info['description']}) at http://{shown}:{port}  (Ctrl+C stops)", flush=True)
    if not ip.is_loopback:
        print(f"note: other machines can reach this page at this machine's address, port {port}; there is no login",
              flush=True)
    try:
        uvicorn.Server(uvicorn.Config(create_app(service), log_level="info")).run(sockets=[listener])
    except KeyboardInterrupt:  # Ctrl+C is how a server stops: uvicorn has shut down cleanly, and says so
        pass
