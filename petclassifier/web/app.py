"""The local web page and its JSON API: photos in; labels, cat or dog, "not a pet" and Grad-CAM out."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import socket
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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

from ..data.cache import square_or_reason
from ..data.transforms import centre_crop
from ..engine.metrics import epoch_rows
from ..errors import UserError
from ..inference.predict import PetClassifier, stack_readable
from ..insight.explain import GradCAM, heat_overlay, upsample
from ..models.checkpoint import describe, flip_tta_of, load_checkpoint, task_of, temperature_of
from .guard import Guard, new_token
from .job_input import MAX_JOB_PHOTOS, Refused
from .limits import MAX_TRAIN_BYTES, MAX_UPLOAD_BYTES, RequestLimits, check_pixels
from .teach import Job, TrainJobs, read_json

MAX_FILES = 64  # photos per request
TAUGHT_MODELS_KEPT = 2  # models taught in the page kept loaded (the latest used)
NO_MODEL = "no model is served here: teach one in the page, or start serve with --checkpoint"
STATIC = Path(__file__).with_name("static")


class PhotoService:
    """The trained classifiers behind the API (the served checkpoint, and models taught in the page), loaded and
    run on one thread of their own, in arrival order; predict requests that wait together share forward passes.

    A forward pass already uses every core; and on 2 CPU cores a second thread running torch made every pass about
    half as slow again (each thread gets its own OpenMP team, which compete), and the server's memory grew with each
    new thread that ran the network (glibc gives each its own heap). One thread also means one photo of up to 89
    megapixels decoded at a time, however many requests wait: each is cut to the square the network sees before the
    next."""

    def __init__(self, checkpoint: Path | None, device: str = "auto"):
        self.device, self.worker = device, ThreadPoolExecutor(1, thread_name_prefix="network")
        self.taught: OrderedDict[str, Loaded] = OrderedDict()  # job id -> its model, the latest used last
        # None: no model served yet, only the ones taught in the page
        self.served = self.worker.submit(Loaded.of, checkpoint, device).result() if checkpoint else None
        self.waiting, self.lock = [], threading.Lock()  # predict requests not yet through the network

    @property
    def classifier(self) -> PetClassifier:
        return self.served.classifier

    @property
    def info(self) -> dict | None:
        return self.served.info if self.served else None

    def model(self, job: Job | None) -> Loaded:
        """The served model, or a taught job's (loaded at its first use; the last few used are kept)."""
        if job is None:
            return self.served
        if job.id not in self.taught:
            self.taught[job.id] = Loaded.of(job.checkpoint, self.device)
            while len(self.taught) > TAUGHT_MODELS_KEPT:
                self.taught.popitem(last=False)
        self.taught.move_to_end(job.id)
        return self.taught[job.id]

    async def run(self, work, *args):
        """`work(*args)` on the service's thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, work, *args)

    async def predict(self, uploads: list[tuple[str, bytes]], top_k: int, job: Job | None = None) -> list[dict]:
        """One `predict --json` entry per upload, in upload order; unreadable ones get an error entry.

        Requests that wait while the network is busy go through it together: their photos share forward passes.
        """
        check_pixels(uploads)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        with self.lock:
            self.waiting.append((uploads, top_k, job, answer, loop))
        self.worker.submit(self._predict_waiting)  # the first of these to run takes every waiting request
        return await answer

    def _predict_waiting(self) -> None:
        """Every waiting request's photos through its model in batches; each request's entries to its future."""
        with self.lock:
            requests, self.waiting = self.waiting, []
        for job in {id(r[2]): r[2] for r in requests}.values():  # each model's requests share its passes
            self._predict_together([r for r in requests if r[2] is job])

    def _predict_together(self, requests: list) -> None:
        try:
            loaded = self.model(requests[0][2])
            decoded = [loaded.decode(name, data) for uploads, *_ in requests for name, data in uploads]
            top_k, size, predictions = max(r[1] for r in requests), loaded.classifier.batch_size, []
            for start in range(0, len(decoded), size):
                predictions += loaded.classifier.scored(*stack_readable(decoded[start : start + size]), top_k)
            for uploads, k, _, answer, loop in requests:
                mine, predictions = predictions[: len(uploads)], predictions[len(uploads) :]
                entries = [replace(p, labels=p.labels[:k]).as_dict() for p in mine]
                loop.call_soon_threadsafe(settle, answer, entries, None)
        except Exception as e:  # each waiting request fails with it, as it would alone
            for *_, answer, loop in requests:
                loop.call_soon_threadsafe(settle, answer, None, e)

    def explain(self, name: str, data: bytes, class_name: str | None, job: Job | None = None) -> tuple:
        """(PNG of the Grad-CAM overlay on the square the network sees, its class, that class's probability)."""
        return self.model(job).explain(name, data, class_name)


@dataclass
class Loaded:
    """One classifier the service runs, with its Grad-CAM and what the page shows about it."""

    classifier: PetClassifier
    gradcam: GradCAM
    info: dict

    @classmethod
    def of(cls, checkpoint: Path, device: str) -> Loaded:
        ckpt = load_checkpoint(checkpoint)
        classifier = PetClassifier.from_loaded(ckpt, device)
        # gradients of activations, not of weights
        return cls(classifier, GradCAM(classifier.model.requires_grad_(False)), model_info(checkpoint, ckpt))

    def decode(self, name: str, data: bytes) -> tuple[str, torch.Tensor | str]:
        """(name, the uint8 square [3, R, R] the network sees) or (name, why the bytes are not a readable photo)."""
        if not data:
            return name, "empty file (0 bytes)"
        return name, square_or_reason(io.BytesIO(data), self.classifier.preprocessing)  # the name is never opened

    def explain(self, name: str, data: bytes, class_name: str | None) -> tuple[bytes, str, float]:
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
            "accuracy": accuracy, "curve": curve, "max_upload_bytes": MAX_UPLOAD_BYTES, "max_files": MAX_FILES,
            "max_job_photos": MAX_JOB_PHOTOS, "max_train_bytes": MAX_TRAIN_BYTES}


async def uploaded_files(request: Request) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The request's `file` uploads as (file name, bytes), in upload order, and its plain form fields."""
    async with request.form(max_files=MAX_FILES, max_fields=16) as form:
        files, fields = form_parts(request, form)
        return [(f.filename or "upload", await f.read()) for f in files], fields


def form_parts(request: Request, form) -> tuple[list[UploadFile], dict[str, str]]:
    """A multipart form's `file` uploads, in upload order, and its plain fields; 400 where there is no photo."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "send photos as multipart/form-data, one 'file' field per photo")
    files = form.getlist("file")
    if not files or not all(isinstance(f, UploadFile) for f in files):
        raise HTTPException(400, "no photo: send each one as a 'file' field of multipart/form-data")
    return files, {k: v for k, v in form.items() if isinstance(v, str)}


def create_app(service: PhotoService, jobs: TrainJobs | None = None, local_only: bool = True,
               token: str | None = None) -> Guard:
    """The ASGI app: the page at /, its files under /static/, the JSON API under /api/; behind the Guard (Host
    names of this computer only where `local_only`, same-origin changes, `token` where one is given)."""
    jobs = jobs or TrainJobs(service.device)

    def taught(fields: dict[str, str]) -> Job | None:
        """The job whose model a request asks for (its `job` field), trained; None for the served model."""
        if not fields.get("job"):
            if service.served is None:
                raise HTTPException(409, NO_MODEL)
            return None
        job = jobs.get(fields["job"])
        if job.status != "done":
            raise HTTPException(409, f"job {job.id} is {job.status}{': ' + job.error if job.error else ''}; its "
                                     "model can answer once it is done")
        return job

    async def predict(request: Request) -> JSONResponse:
        uploads, fields = await uploaded_files(request)
        top_k = fields.get("top_k", request.query_params.get("top_k", "5"))
        if not (top_k.isascii() and top_k.isdigit()) or int(top_k) < 1:  # "²".isdigit() is True
            raise HTTPException(400, f"top_k must be a whole number, at least 1 (got {top_k!r})")
        return JSONResponse(await service.predict(uploads, int(top_k), taught(fields)))

    async def explain(request: Request) -> Response:
        uploads, fields = await uploaded_files(request)
        if len(uploads) != 1:
            raise HTTPException(400, f"explain takes one photo, not {len(uploads)}")
        check_pixels(uploads)
        png, label, probability = await service.run(service.explain, *uploads[0], fields.get("class"),
                                                    taught(fields))
        # headers are latin-1: the class name (any script) is sent percent-encoded UTF-8, as in a URL
        return Response(png, media_type="image/png",
                        headers={"X-Class": quote(label, safe=""), "X-Probability": f"{probability:.6f}"})

    async def train(request: Request) -> JSONResponse:
        async with request.form(max_files=MAX_JOB_PHOTOS + 1, max_fields=16) as form:
            files, fields = form_parts(request, form)
            uploads = [(f.filename or "upload", f.file) for f in files]  # spooled: written to the job's folder
            job = await asyncio.to_thread(jobs.create, uploads, fields.get("labels"), fields)
        return JSONResponse({"job": job.id}, status_code=202)

    async def train_status(request: Request) -> JSONResponse:
        return JSONResponse(jobs.status(request.path_params["job"]))

    async def train_checkpoint(request: Request) -> FileResponse:
        job = taught({"job": request.path_params["job"]})
        name = "-".join(job.classes)[:80]
        return FileResponse(job.checkpoint, filename=f"petclassifier-{name}.pt", media_type="application/octet-stream")

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(service.info) if service.info else JSONResponse({"error": NO_MODEL}, status_code=404)

    async def health(request: Request) -> JSONResponse:
        info = service.info or {"model": None, "class_names": []}
        return JSONResponse({"status": "ok", "model": info["model"], "classes": len(info["class_names"]),
                             "teaching": {"ready_workers": jobs.ready_workers(), "at_once": jobs.slots}})

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def refused(request: Request, exc: Refused) -> JSONResponse:
        retry = {"Retry-After": "60"} if exc.status == 503 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=retry)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(jobs.close)  # the running job stops; every job's photos and model are removed

    routes = [Route("/", page), Route("/api/predict", predict, methods=["POST"]),
              Route("/api/explain", explain, methods=["POST"]), Route("/api/model", model),
              Route("/api/health", health), Route("/api/train", train, methods=["POST"]),
              Route("/api/train/{job}", train_status), Route("/api/train/{job}/checkpoint", train_checkpoint),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, exception_handlers={HTTPException: error, Refused: refused}, lifespan=lifespan)
    return Guard(RequestLimits(app, MAX_UPLOAD_BYTES, larger={"/api/train": MAX_TRAIN_BYTES}), local_only, token)


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


def serve(checkpoint: Path | None, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          token: str | None = None) -> None:
    """Load the checkpoint (None: none, the page teaches one), listen on host:port (0: any free port) and serve
    until Ctrl+C; beyond this computer only with a token (`token`, or a new one printed in the address)."""
    listener = listening_socket(host, port)
    service = PhotoService(checkpoint, device)
    ip, port = ipaddress.ip_address(listener.getsockname()[0]), listener.getsockname()[1]
    local_only = ip.is_loopback
    token = token or (None if local_only else new_token())
    shown = "localhost" if ip.is_unspecified else f"[{host}]" if ip.version == 6 and host == str(ip) else host
    served = f"{checkpoint} ({service.info['description']})" if checkpoint else "no model yet (the page teaches one)"
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"serving {served} at {address}  (Ctrl+C stops)", flush=True)
    if not local_only:
        print(f"note: other machines can reach this page at this machine's address, port {port}, with the token "
              "in the address above", flush=True)
    jobs = TrainJobs(device)
    jobs.start_workers()  # warming up while the first learners choose their photos
    try:
        app = create_app(service, jobs, local_only, token)
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[listener])
    except KeyboardInterrupt:  # Ctrl+C is how a server stops: uvicorn has shut down cleanly, and says so
        pass
    finally:
        jobs.close()  # also where the server stopped without its shutdown (the jobs' files are temporary)
