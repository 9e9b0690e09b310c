"""What a client can make the server hold: bytes per request, uploads in flight, decoded pixels per request."""

from __future__ import annotations

import io

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

MAX_UPLOAD_BYTES = 32 * 2**20  # per request: a 48-megapixel phone JPEG fits; a larger body gets 413
MAX_TRAIN_BYTES = 512 * 2**20  # per teaching request (POST /api/train): a few hundred phone photos, spooled to disk
MAX_PIXELS_PER_REQUEST = 200_000_000  # decoded pixels a request may ask for (four 48-megapixel photos); past it 413
# uploads read or answered at once; past it 503 with Retry-After, before the body is read: the server's memory holds
# at most this many request bodies (uploads past 1 MiB are spooled to disk while they arrive)
MAX_IN_FLIGHT = 8
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


class RequestLimits:
    """ASGI wrapper bounding what clients can make the server hold: a request body over its path's limit gets 413
    (at once when its Content-Length says so, or as soon as that many bytes of a body without one have arrived),
    and an upload past `max_in_flight` uploads at once gets 503 with Retry-After before its body is read."""

    def __init__(self, app, max_bytes: int = MAX_UPLOAD_BYTES, max_in_flight: int = MAX_IN_FLIGHT,
                 larger: dict[str, int] | None = None):
        self.app, self.limit, self.max_in_flight, self.in_flight = app, max_bytes, max_in_flight, 0
        self.larger = larger or {}  # path -> its own byte limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = self.larger.get(scope["path"], self.limit)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > limit:
            too_large = JSONResponse({"error": message(length.decode("latin-1"), limit)}, status_code=413)
            return await too_large(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            busy = JSONResponse({"error": f"busy: {self.in_flight} uploads in progress; try again in a moment"},
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

        self.in_flight += 1
        try:
            await self.app(scope, counted, send)
        finally:
            self.in_flight -= 1


def message(size: str, limit: int) -> str:
    return f"the upload ({size} bytes) is over the limit of {limit // 2**20} MiB per request"
