"""Response headers OpenAI's API sends and clients read: `openai-processing-ms` (the server's own
time for the request, from the moment the application receives it to the start of its response:
the first byte of a stream) and `x-request-id` (the SDK exposes it as `._request_id`).

A pure ASGI middleware rather than Starlette's BaseHTTPMiddleware, which would buffer streamed
responses and add a task per request."""

from __future__ import annotations

import time
import uuid


class ProcessingTime:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                ms = round((time.perf_counter() - started) * 1000)
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"openai-processing-ms", str(ms).encode()),
                                                  (b"x-request-id", f"req_{uuid.uuid4().hex}".encode())]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
