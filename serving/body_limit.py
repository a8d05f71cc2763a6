"""A request-body size limit as pure ASGI middleware, whatever the framing.

A Content-Length over the limit is refused before any byte is read; a body sent without one
(``Transfer-Encoding: chunked``) is counted as it arrives and refused as soon as it passes the
limit, so the server never buffers more than the limit. Pure ASGI (no ``BaseHTTPMiddleware``:
no extra task or stream copy per request; Starlette docs, "Pure ASGI Middleware").
"""
from __future__ import annotations

from typing import Callable

import orjson
from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit: an HTTPException, so FastAPI's
    body parsing passes it on (it turns other errors into 400) to the app's 413 handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body exceeds {limit} bytes")


class BodyLimit:
    def __init__(self, app, limit: Callable[[], int | None]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        limit = self.limit() if scope["type"] == "http" else None
        if not limit:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _refuse(send, f"body of {int(length)} bytes exceeds {limit}")
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge as error:
            if not started:
                await _refuse(send, error.detail)


async def _refuse(send, message: str) -> None:
    body = orjson.dumps({"error": message, "field": "body"})
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
