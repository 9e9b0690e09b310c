"""What a client can make the server hold: bytes per request, uploads in flight, decoded pixels per request."""

from __future__ import annotations

import asyncio
import collections
import io

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

MAX_UPLOAD_BYTES = 32 * 2**20  # per request: a 48-megapixel phone JPEG fits; a larger body gets 413
MAX_FILES = 64  # photos per request
MAX_TRAIN_BYTES = 512 * 2**20  # per teaching request (POST /api/train): a few hundred phone photos, spooled to disk
MAX_PIXELS_PER_REQUEST = 200_000_000  # decoded pixels a request may ask for (four 48-megapixel photos); past it 413
# uploads read or answered at once, and their bodies' bytes (Content-Length; one larger body may go alone): what the
# server's memory holds of request bodies (Starlette spools uploads past 1 MiB to disk while they arrive, but
# predict reads each photo whole; 8 uploads of 30 MB at once rose its peak by 560 MB) ...
MAX_IN_FLIGHT = 8
MAX_BYTES_IN_FLIGHT = 96 * 2**20
# ... and uploads waiting their turn, in arrival order, their bodies not read yet (uvicorn stops reading a
# connection past 64 KiB not asked for); past it 503 with Retry-After. Without the line, 16 clients each asking
# again after a 503 were served by luck: p95 0.6 s, p99 9 s.
MAX_WAITING = 32
RETRY_AFTER_SECONDS = 1


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


class Turns:
    """First come, first served: at most `count` holders at once, holding at most `budget` bytes in all (a holder
    larger than that goes alone)."""

    def __init__(self, count: int, budget: int):
        self.count, self.budget, self.holders, self.held = count, budget, 0, 0
        self.line: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    def busy(self) -> bool:
        return self.holders > 0 and (self.holders >= self.count or self.held >= self.budget or bool(self.line))

    def fits(self, size: int) -> bool:
        return self.holders == 0 or (self.holders < self.count and self.held + size <= self.budget)

    async def acquire(self, size: int) -> None:
        if not self.line and self.fits(size):
            self.holders, self.held = self.holders + 1, self.held + size
            return
        turn = asyncio.get_running_loop().create_future()
        self.line.append((size, turn))
        try:
            await turn
        except asyncio.CancelledError:  # its client went away: out of the line, or its turn handed on
            if turn.done() and not turn.cancelled():
                self.release(size)
            else:
                self.line.remove((size, turn))
            raise

    def release(self, size: int) -> None:
        self.holders, self.held = self.holders - 1, self.held - size
        while self.line and self.fits(self.line[0][0]):  # the next in line, in order
            size, turn = self.line.popleft()
            self.holders, self.held = self.holders + 1, self.held + size
            turn.set_result(None)


class RequestLimits:
    """ASGI wrapper bounding what clients can make the server hold: a request body over its path's limit gets 413
    (at once when its Content-Length says so, or as soon as that many bytes of a body without one have arrived);
    past `max_in_flight` uploads or `max_bytes_in_flight` of them at once, the next waits its turn, its body unread,
    unless `max_waiting` wait already: then it gets 503 with Retry-After."""

    def __init__(self, app, max_bytes: int = MAX_UPLOAD_BYTES, max_in_flight: int = MAX_IN_FLIGHT,
                 max_waiting: int = MAX_WAITING, larger: dict[str, int] | None = None,
                 max_bytes_in_flight: int = MAX_BYTES_IN_FLIGHT):
        self.app, self.limit, self.max_waiting = app, max_bytes, max_waiting
        self.turns = Turns(max_in_flight, max_bytes_in_flight)
        self.larger = larger or {}  # path -> its own byte limit

    @property
    def waiting(self) -> int:
        return len(self.turns.line)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = self.larger.get(scope["path"], self.limit)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            too_large = JSONResponse({"error": message(length.decode("latin-1"), limit)}, status_code=413)
            return await too_large(scope, receive, send)
        if self.turns.busy() and self.waiting >= self.max_waiting:
            busy = JSONResponse({"error": f"busy: {self.waiting} uploads waiting; try again in a moment"},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return await busy(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            body = await receive()
            received += len(body.get("body", b""))
            if received > limit:  # raised inside the route: its error handler answers 413
                raise HTTPException(413, message(f"more than {received:,}", limit))
            return body

        size = min(int(length) if length.isdigit() else limit, self.turns.budget)  # no length: the most it may be
        await self.turns.acquire(size)
        try:
            await self.app(scope, counted, send)
        finally:
            self.turns.release(size)


def message(size: str, limit: int) -> str:
    return f"the upload ({size} bytes) is over the limit of {limit // 2**20} MiB per request"
