"""`create_app(settings)`: the gateway as a FastAPI app (an app factory, one state per app)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from dskit._version import __version__
from dskit.client._errors import DSKitError
from dskit.gateway._compose import Gateway, compose
from dskit.gateway._errors import (
    REDIS_RETRY_AFTER,
    GatewayError,
    error_response,
    logged_error,
    malformed_json,
    outage_errors,
    validation_error,
)
from dskit.gateway._schemas import ErrorResponse, GatewayInfo, LoginRequest, LoginResult
from dskit.gateway._settings import GatewaySettings
from dskit.gateway.access._jwt import Clock
from dskit.gateway.backends._limits import RateLimiter
from dskit.gateway.backends._log import StreamLog
from dskit.gateway.backends._redis import redis_answers
from dskit.gateway.edge._deps import COOKIE, GatewayDep
from dskit.gateway.edge._fast import FastLane
from dskit.gateway.edge._guard import AccessGuard, token_login
from dskit.gateway.edge._headers import EdgeMiddleware
from dskit.gateway.edge._keywatch import StreamWatch
from dskit.gateway.edge._middleware import GatewayMiddleware
from dskit.gateway.edge._routes_formats import router as formats_router
from dskit.gateway.edge._routes_openai import FastChatCompletions
from dskit.gateway.edge._routes_openai import router as openai_router
from dskit.gateway.edge._routes_sessions import FastSessionMessages
from dskit.gateway.edge._routes_sessions import router as sessions_router
from dskit.gateway.edge._routes_ws import router as ws_router
from dskit.store import SessionStore

ERROR_STATUSES = (400, 401, 404, 409, 413, 422, 429, 502, 503, 504)
ERROR_DOC: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": "An error"} for status in ERROR_STATUSES
}
STATIC = resources.files("dskit.gateway") / "static"


def create_app(
    settings: GatewaySettings | None = None,
    *,
    clock: Clock | None = None,
    log: StreamLog | None = None,
    limiter: RateLimiter | None = None,
    store: SessionStore | None = None,
    fast_chat: bool = True,
) -> FastAPI:
    """The gateway app; its resources start and stop with the app's lifespan.

    `log`, `limiter` and `store` replace the embedded defaults (in-memory stream log and
    rate limiter, the store named by `settings.store`): the seams for shared backends (a `log`
    given here is this instance's own: only `settings.redis` makes a fleet that takes over).
    `clock` (epoch seconds) is what tokens' exp/nbf and JWKS cache times are read from.
    `fast_chat=False` serves `POST /v1/chat/completions` and the streamed `POST
    /v1/sessions/{id}/messages` by their documented FastAPI routes instead of their fast
    lanes (`_fast.py`; the same answers, slower): the seam for the test that both
    answer alike.
    """
    settings = settings or GatewaySettings()
    gw = compose(settings, store=store, log=log, limiter=limiter, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            async with contextlib.AsyncExitStack() as servers:
                if settings.grpc_port:  # grpcio is imported only then
                    from dskit.gateway.edge._grpc import serving

                    await servers.enter_async_context(serving(gw))
                yield
        finally:
            await gw.stop()

    app = GatewayApp(
        title="dskit gateway", version=__version__, lifespan=lifespan, responses=ERROR_DOC,
        description="Chat for front ends over SSE, with resume; OpenAI-compatible relay.",
    )  # fmt: skip
    app.state.gateway = gw
    app.fast_chat = fast_chat
    _install_handlers(app, gw)
    app.include_router(openai_router)
    app.include_router(sessions_router)
    app.include_router(ws_router)
    app.include_router(formats_router)
    _install_operations(app)
    _install_web(app)
    return app


class GatewayApp(FastAPI):
    """FastAPI with the gateway's own outer layers: `GatewayMiddleware` (request ids, the
    body limit, metrics, the access log) around everything, `EdgeMiddleware` (Host,
    content-type and origin checks, the page's headers) inside it, then `StreamWatch` (the
    streams of revoked keys and expired tokens end), and the fast lanes (`POST
    /v1/chat/completions`, the streamed session turn; `_fast.py`) right under it. Every
    chunk of a relayed stream would otherwise pass through each of Starlette's middlewares
    on its way out."""

    fast_chat = True  # False: the documented route serves it (see `create_app`)

    def build_middleware_stack(self) -> ASGIApp:
        gw: Gateway = self.state.gateway
        settings = gw.settings
        lane = inner = super().build_middleware_stack()
        if self.fast_chat:
            fast = [FastChatCompletions(gw, inner), FastSessionMessages(gw, inner)]
            lane = FastLane(fast, inner)

        guard = AccessGuard(lane, gw, self.routes)  # every route's permission, checked once
        watch = StreamWatch(guard, gw.watch)
        edge = EdgeMiddleware(watch, settings.host, settings.allowed_hosts)
        return GatewayMiddleware(edge, gw.metrics, settings.max_body_bytes)


def _install_handlers(app: FastAPI, gw: Gateway) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        return error_response(logged_error(exc, request.url.path))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        gw.metrics.errors.labels("validation").inc()
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":  # not JSON at all: a 400
            reason = errors[0].get("ctx", {}).get("error") or errors[0].get("msg")
            return error_response(malformed_json(ValueError(reason)))
        return error_response(validation_error(errors))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = GatewayError(exc.status_code, str(exc.detail), code="http_error")
        return Response(
            error.encode(), status_code=exc.status_code, media_type="application/json",
            headers=dict(exc.headers or {}),
        )  # fmt: skip

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_gateway_error)
    # Our own errors, Redis or every upstream away: answered by the exception middleware
    # (the catch-all above answers too, but then re-raises and the connection is dropped)
    known: tuple[type[Exception], ...] = (DSKitError, *outage_errors())
    for kind in known:
        app.add_exception_handler(kind, on_gateway_error)


def _install_operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def readyz(gw: GatewayDep) -> Response:
        """Readiness: the upstream client is set up and, with --redis, Redis answers."""
        if not gw.ready:
            return error_response(GatewayError(503, "starting", "server_error", code="starting"))
        if gw.redis is not None and not await redis_answers(gw.redis.client):
            return error_response(GatewayError(
                503, "the shared store (Redis) is unavailable", "server_error",
                code="store_unavailable", retry_after=REDIS_RETRY_AFTER,
            ))  # fmt: skip
        return JSONResponse({"status": "ready", "upstream": gw.mode})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics(gw: GatewayDep) -> Response:
        """Prometheus metrics (text exposition format)."""
        from dskit.gateway._metrics import CONTENT_TYPE

        return Response(gw.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/gateway", tags=["operations"], response_model=GatewayInfo)
    async def info(gw: GatewayDep) -> dict[str, Any]:
        """Which upstream answers (the web page shows a banner for the simulator)."""
        return gw.info()


def _install_web(app: FastAPI) -> None:
    @app.post(
        "/v1/login", tags=["web"], status_code=204,
        responses={200: {"model": LoginResult, "description": "Signed in with a token"}},
    )  # fmt: skip
    async def login(body: LoginRequest, gw: GatewayDep) -> Response:
        """Exchange a gateway key (204) or a JWT (200, with its expiry) for an HttpOnly
        cookie (what the web page uses)."""
        if body.token is not None:
            return await token_login(gw, body.token)
        assert body.key is not None
        if gw.auth_required and gw.keys.principal_for(body.key) is None:
            raise GatewayError(401, "invalid gateway API key", "authentication_error",
                               code="invalid_api_key")  # fmt: skip
        response = Response(status_code=204)
        response.set_cookie(COOKIE, body.key, httponly=True, samesite="strict", path="/")
        return response

    @app.post("/v1/logout", tags=["web"], status_code=204)
    async def logout() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
