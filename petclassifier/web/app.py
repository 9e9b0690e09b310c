"""The local web page and its JSON API: photos in; labels, cat or dog, "not a pet" and Grad-CAM out."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from pathlib import Path
from urllib.parse import quote

import python_multipart  # noqa: F401  (Starlette parses uploads with it: checked at start, not at the first upload)
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import UserError
from .guard import Guard, new_token
from .job_input import MAX_JOB_PHOTOS, Refused
from .limits import MAX_FILES, MAX_TRAIN_BYTES, MAX_UPLOAD_BYTES, RequestLimits, check_pixels
from .service import NO_MODEL, PhotoService
from .teach import Job, TrainJobs

STATIC = Path(__file__).with_name("static")


def form_parts(request: Request, form) -> tuple[list[UploadFile], dict[str, str]]:
    """A multipart form's `file` uploads, in upload order, and its plain fields; 400 where there is no photo."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "send photos as multipart/form-data, one 'file' field per photo")
    files = form.getlist("file")
    if not files or not all(isinstance(f, UploadFile) for f in files):
        raise HTTPException(400, "no photo: send each one as a 'file' field of multipart/form-data")
    return files, {k: v for k, v in form.items() if isinstance(v, str)}


async def uploaded_files(request: Request) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The request's `file` uploads as (file name, bytes), in upload order, and its plain form fields."""
    async with request.form(max_files=MAX_FILES, max_fields=16) as form:
        files, fields = form_parts(request, form)
        return [(f.filename or "upload", await f.read()) for f in files], fields


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
