"""Request body limits, enforced while the body streams in (chunked bodies included), for every endpoint.

A pure ASGI middleware: a declared Content-Length over the limit is answered 413 before a byte is read;
otherwise the bytes are counted as they arrive and the request is cut off at the limit, so no body is
ever held in memory past it. Being plain ASGI (not Starlette's function-style middleware) it leaves
`request.is_disconnected()` working, which the claim long-poll relies on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lrbs.service.errors import PROBLEM_JSON, TYPE_BASE
from lrbs.service.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MIB = 1 << 20
MULTIPART_SLACK = MIB  # multipart headers and the form fields around an uploaded file


def limit_for(settings: Settings, method: str, path: str) -> tuple[int, str]:
    """The most bytes a request to this route may send, and the setting that says so."""
    if method == "POST" and path == "/v1/datasets":
        return int(settings.max_upload_mb * MIB) + MULTIPART_SLACK, "LRBS_MAX_UPLOAD_MB"
    if path.startswith("/v1/worker/jobs/") and path.endswith(":complete"):
        return int(settings.max_result_mb * MIB), "LRBS_MAX_RESULT_MB"
    return settings.max_spec_bytes, "LRBS_MAX_SPEC_BYTES"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = limit_for(self.settings, scope["method"], scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(send, scope, limit, setting, f"declares {int(declared)} bytes")
            return

        received, over = 0, False
        answered = False

        async def counted_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True  # the app sees a client that went away; it never gets the rest
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if over:  # whatever the app makes of the cut-off body, the answer is 413
                if not answered:
                    answered = True
                    await self._refuse(send, scope, limit, setting, f"sent more than {limit} bytes")
                return
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
        if over and not answered:
            await self._refuse(send, scope, limit, setting, f"sent more than {limit} bytes")

    @staticmethod
    async def _refuse(send: Send, scope: Scope, limit: int, setting: str, what: str) -> None:
        body = json.dumps({
            "type": TYPE_BASE + "too-large",
            "title": "Content too large",
            "status": 413,
            "detail": f"the request {what}; this endpoint accepts at most {limit} bytes (setting {setting})",
            "instance": scope["path"],
        }).encode()  # fmt: skip
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})
