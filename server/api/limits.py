"""Request body size limits: every request has one, an artifact upload a larger one.

A body over its limit is answered 413 with a :class:`~edgeloop.server.schemas.Problem` that
names the limit and the setting behind it. A declared ``Content-Length`` over the limit is
refused before the route runs and before a byte of the body is read; a body without one
(chunked) is counted as it streams in and refused at the first byte past the limit, so no
route ever holds more than the limit in memory (and an upload's partial file is removed).

Written here rather than taken from Starlette's ``RequestBodyLimitMiddleware``: that one
answers plain text, and when a route does not read its body, swaps in the 413 only once the
route has run (its side effects done).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import ByteSize
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..schemas import Problem


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request body may have, and what the limit is called."""

    max_bytes: int
    what: str
    """What is limited and by which setting, e.g. ``JSON bodies (--max-json-body)``."""

    def refusal(self, size: int | None = None) -> str:
        told = f"the request body ({size} bytes)" if size is not None else "the request body"
        return (
            f"{told} is over the limit of {ByteSize(self.max_bytes).human_readable()} for "
            f"{self.what}; send less, or ask the operator to raise it"
        )


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when a streamed body passes its limit; the app's handler for
    HTTP errors answers it (FastAPI re-raises an HTTP error met while reading a body)."""

    def __init__(self, limit: BodyLimit) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, limit.refusal())


class BodyLimitMiddleware:
    """Pure ASGI (no ``BaseHTTPMiddleware``), so a body streams through it untouched."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: BodyLimit,
        uploads: dict[tuple[str, str], BodyLimit] | None = None,
    ) -> None:
        """``uploads``: ``(method, path prefix)`` → a limit for the routes there instead."""
        self.app = app
        self.default = default
        self.uploads = uploads or {}

    def limit_for(self, scope: Scope) -> BodyLimit:
        for (method, prefix), limit in self.uploads.items():
            if scope["method"] == method and scope["path"].startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit.max_bytes:
            problem = Problem(detail=limit.refusal(int(declared)))
            response = JSONResponse(
                problem.model_dump(mode="json"),
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise BodyTooLargeError(limit)
            return message

        await self.app(scope, counted, send)
