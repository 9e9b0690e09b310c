"""Who may use the server, decided as Jupyter's server decides: the Host names it answers to (a page elsewhere can
re-bind its own name to 127.0.0.1), the origin of requests that change something (any site's page can post a form
to 127.0.0.1), and a token wherever other machines can reach it."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse

COOKIE = "petclassifier-token"
LOCAL_NAMES = ("localhost",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    """Whether a listening address reaches this computer only."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_hex(24)


def host_name(host: str) -> str:
    """A Host header's name without its port: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names the server the request was sent to (its Host); 'null' never does."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    default = ":80" if parts.scheme == "http" else ":443"
    return parts.netloc.removesuffix(default) == host.strip().lower().removesuffix(default)


class Guard:
    """ASGI middleware: 403 with its reason for a foreign Host (where the server listens on loopback), a changing
    request from another origin, or a missing token (where one is set); a right `?token=` is kept in a cookie."""

    def __init__(self, app, local_only: bool, token: str | None):
        self.app, self.local_only, self.token = app, local_only, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host, reason = headers.get("host", ""), None
        if self.local_only and not is_loopback(host_name(host)):
            reason = f"Host {host!r} is not a name of this server (it answers to localhost and 127.0.0.1)"
        elif scope["method"] not in SAFE_METHODS and not self.same_site(headers, host):
            reason = "a page of another site cannot send this request: open the page of this server itself"
        elif self.token and not self.token_given(scope, headers):
            reason = "this server needs its token: open the address it printed, which ends with ?token=..."
        if reason is not None:
            return await JSONResponse({"error": reason}, status_code=403)(scope, receive, send)
        if self.token and self.token in parse_qs(scope.get("query_string", b"").decode()).get("token", []):
            send = self.setting_cookie(send)  # later requests of the page carry the cookie, not the URL
        await self.app(scope, receive, send)

    @staticmethod
    def same_site(headers: Headers, host: str) -> bool:
        """A request that changes something comes from this server's own page, or from no page at all (curl)."""
        if headers.get("sec-fetch-site") == "cross-site":
            return False
        origin = headers.get("origin")
        return origin is None or same_origin(origin, host)

    def token_given(self, scope, headers: Headers) -> bool:
        cookie = SimpleCookie(headers.get("cookie", ""))
        given = [*parse_qs(scope.get("query_string", b"").decode()).get("token", []),
                 headers.get("authorization", "").removeprefix("token ").removeprefix("Bearer ").strip(),
                 cookie[COOKIE].value if COOKIE in cookie else ""]
        return any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given if g)

    def setting_cookie(self, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(
                    "set-cookie", f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict")
            await send(message)

        return sending
