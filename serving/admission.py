"""Load shedding as pure ASGI middleware: at most ``limit`` requests in flight per replica.

Past the limit a request is answered at once with 503, a JSON body naming the field and a
``Retry-After`` header, instead of queueing behind work it would wait seconds for (the same
contract as Serve's ``max_queued_requests``, which sheds at the proxy before a request reaches
a replica; both are set in serve_config.yaml). Health and metrics endpoints are never shed.
"""
from __future__ import annotations

from typing import Callable

import orjson

EXEMPT = (b"/healthz", b"/metrics")


class Admission:
    def __init__(self, app, limit: Callable[[], int | None], retry_after_s: int = 1) -> None:
        self.app, self.limit, self.retry_after_s = app, limit, retry_after_s
        self.inflight = 0
        self.shed = 0

    async def __call__(self, scope, receive, send) -> None:
        limit = self.limit() if scope["type"] == "http" else None
        if not limit or scope.get("raw_path", scope.get("path", "").encode()) in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.inflight >= limit:
            self.shed += 1
            body = orjson.dumps({"error": f"overloaded: {limit} requests in flight; retry later",
                                 "field": "request"})
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"retry-after", str(self.retry_after_s).encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
