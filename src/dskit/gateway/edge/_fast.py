"""Fast lanes: the hottest routes as plain ASGI handlers in front of FastAPI.

FastAPI solves a route's dependencies and validates its parameters on every request,
and for a chat answer that costs more than relaying it. A `FastRoute` takes the request
itself (the caller `AccessGuard` left in the scope, the body parsed by the route's own
pydantic model) and answers as its documented route would. Whatever it cannot take as it
is (a body that does not validate, a mode it does not serve) goes, untouched and with its
body replayed, to the documented route: one place for every error, and the lane stays
small. `tests/gateway/test_fast_path.py` holds both to the same answers.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dskit.gateway._compose import Gateway
from dskit.gateway._errors import error_response, logged_error
from dskit.gateway.edge._middleware import BodyTooLarge


class FastRoute:
    """One documented route's fast lane: `path` is its template (what metrics label the
    request with; and the path it serves, unless `matches` says otherwise), `handle` its
    work: the response, or None for the documented route to answer."""

    path: ClassVar[str]

    def __init__(self, gw: Gateway, documented: ASGIApp) -> None:
        self.gw = gw
        self.documented = documented

    def matches(self, path: str) -> bool:
        return path == self.path

    async def handle(self, request: Request) -> Response | None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # what the metrics middleware labels requests with
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except BodyTooLarge:
            raise
        except Exception as exc:  # every failure answers in the one error shape
            response = error_response(logged_error(exc, self.path))
        if response is None:
            await self.documented(scope, _replaying(await request.body(), receive), send)
        else:
            await response(scope, receive, send)


class FastLane:
    """POSTs a fast route serves go to it; everything else to FastAPI."""

    def __init__(self, routes: list[FastRoute], app: ASGIApp) -> None:
        self.routes = routes
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                if route.matches(scope["path"]):
                    await route(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` that first hands out again the body already read."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
