"""The request guard (body size and time limits, requests in flight) and request metrics.

A pure ASGI middleware (no buffering, no extra task per request):

* a ``Content-Length`` over the limit is answered 413 before anything is read; any body
  (chunked ones too) is counted while it is read, and the read stops with 413 as soon as it
  passes the limit, so a lying or missing ``Content-Length`` cannot make the service buffer
  more than the limit;
* the whole body must arrive within the timeout of the request's start (408 otherwise): a
  client trickling bytes cannot hold a request open;
* every request runs inside :meth:`InFlight.track`, so a shutdown can wait for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bagbot_core.service.errors import error_response
from bagbot_core.service.runtime import InFlight


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body: int, timeout: float,
                 inflight: InFlight) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = timeout
        self.inflight = inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.inflight.track():
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and (not declared.isdigit()
                                         or int(declared) > self.max_body):
                await error_response(413, "PayloadTooLarge",
                                     f"the request body is over {self.max_body} bytes",
                                     details={"max_body": self.max_body},
                                     headers={"Connection": "close"})(scope, receive, send)
                return
            await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        received = 0
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # after the body: e.g. waiting for the client to disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPException(408, headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, headers={"Connection": "close"})
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return limited


class RequestMetrics:
    """Reports every HTTP request to ``observe(route, method, status, seconds)``; the route
    is the matched route's template (``/v1/orders/{order_id}``), never the path."""

    def __init__(self, app: ASGIApp, *, observe: Callable[[str, str, int, float], None],
                 unmatched: str = "other") -> None:
        self.app = app
        self.observe = observe
        self.unmatched = unmatched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: an exception escaped
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None)
            self.observe(route if isinstance(route, str) and route else self.unmatched,
                         scope["method"], status, time.perf_counter() - started)
