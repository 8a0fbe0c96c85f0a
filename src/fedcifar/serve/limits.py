"""A request body size limit that stops reading as soon as the limit is passed.

Without it, the multipart parser would spool a huge upload to disk before the endpoint could
look at its size. A declared ``Content-Length`` over the limit is refused before any byte of
the body is kept; a body without one (chunked) is cut off once it passes the limit.

Before answering 413, the rest of the body is read and thrown away, up to ``drain_bytes``
(and ``drain_seconds``), as servers do with a lingering close: a client that writes its whole
body before reading (Python's ``urllib``, many scripts) would otherwise see the connection
reset instead of the 413 and its reason. A client that sent ``Expect: 100-continue`` has sent
nothing yet, so it gets the 413 at once. Past the drain bound the connection is closed anyway.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0


async def drain(receive: Receive, limit: int, seconds: float) -> bool:
    """Read and discard the rest of a request body, up to ``limit`` bytes; True if it all arrived."""
    received = 0

    async def read_rest() -> bool:
        nonlocal received
        while received <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return False  # the client went away
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    try:
        return await asyncio.wait_for(read_rest(), seconds)
    except TimeoutError:
        return False


class BodySizeLimit:
    """Pure ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        reason: str,
        drain_bytes: int = DRAIN_BYTES,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reason = reason
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if "100-continue" not in headers.get("expect", "").lower():
                await drain(receive, self.drain_bytes, self.drain_seconds)
            response = JSONResponse({"detail": self.reason}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await drain(receive, self.drain_bytes, self.drain_seconds)
                    # An HTTPException is re-raised by FastAPI's body parsing, then answered as JSON.
                    raise HTTPException(413, self.reason, {"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)
