"""A request body size limit that stops reading as soon as the limit is passed.

Without it, the multipart parser would spool a huge upload to disk before the endpoint could
look at its size. A declared ``Content-Length`` over the limit is refused before any byte of
the body is read; a body without one (chunked) is cut off once it passes the limit.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Pure ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int, reason: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reason = reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
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
                    # An HTTPException is re-raised by FastAPI's body parsing, then answered as JSON.
                    raise HTTPException(413, self.reason)
            return message

        await self.app(scope, limited_receive, send)
