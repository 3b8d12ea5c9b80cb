"""`AccessGuard`: the one place a request is authenticated and its route's permission
checked (pure ASGI, around every route, the fast chat lane included).

The request's route (matched as the router will) names its permission in
`_access.ROUTE_PERMISSIONS`; a route missing there is refused to everyone (403), and the
table test over all routes finds it. A public route passes untouched. Otherwise the
credential (Bearer, `x-api-key` on the Anthropic routes, or the page's cookie) is a JWT
of a configured issuer or a gateway API key; the caller lands in the scope for the
route (`_deps.caller_of`), and errors are the route's own shape (Anthropic's under
`/anthropic/`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
from fastapi.routing import iter_route_contexts
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from dskit.gateway._errors import GatewayError, error_response
from dskit.gateway._schemas import LoginResult
from dskit.gateway.access._jwt import JwksUnavailable, JwtError, looks_like_jwt
from dskit.gateway.access._matrix import ROUTE_PERMISSIONS, Caller, Permission, local_caller
from dskit.gateway.backends._keys import LOCAL_PRINCIPAL
from dskit.gateway.edge._deps import COOKIE, SCOPE_CALLER, request_key
from dskit.gateway.edge._headers import deny
from dskit.gateway.edge._keywatch import SCOPE_KEY

if TYPE_CHECKING:
    from dskit.gateway._compose import Gateway

ANTHROPIC_PREFIX = "/anthropic/"
UNLISTED = None  # a route without a permission in the table: nobody may use it


def route_paths(routes: Sequence[BaseRoute]) -> list[tuple[str, bool]]:
    """Every route's path template, included routers flattened, and whether it is a
    mount (a prefix)."""
    flat: list[tuple[str, bool]] = []
    for context in iter_route_contexts(routes):
        if context.path is not None:
            flat.append((context.path, isinstance(context.original_route, Mount)))
    return flat


class RouteTable:
    """The permission of the route a request will reach (`Permission.PUBLIC` when no
    route matches: the router then answers 404 and nothing is exposed)."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.exact: dict[str, Permission | None] = {}
        self.patterned: list[tuple[re.Pattern[str], Permission | None]] = []
        for path, mount in route_paths(routes):
            permission = ROUTE_PERMISSIONS.get(path, UNLISTED)
            if mount:
                pattern = re.compile(re.escape(path.rstrip("/")) + "/")
                self.patterned.append((pattern, permission))
            elif "{" in path:
                self.patterned.append((compile_path(path)[0], permission))
            else:
                self.exact.setdefault(path, permission)

    def permission(self, scope: Scope) -> Permission | None:
        path: str = scope["path"]
        if path in self.exact:
            return self.exact[path]
        for pattern, permission in self.patterned:
            if pattern.match(path):
                return permission
        return Permission.PUBLIC


def denied(path: str, error: GatewayError) -> Response:
    """The refusal in the route's own error shape."""
    if path.startswith(ANTHROPIC_PREFIX):
        from dskit.gateway.edge._format_relay import ANTHROPIC

        return ANTHROPIC.error_response(error)
    return error_response(error)


async def verify_token(gw: Gateway, token: str) -> Caller:
    """The caller a JWT names (401 when it is not accepted, 503 when its issuer's keys
    cannot be fetched)."""
    verifier = gw.authority.verifier
    if verifier is None:
        raise GatewayError(401, "no token issuers are configured", "authentication_error",
                           code="invalid_token")  # fmt: skip
    try:
        identity = await verifier.verify(token)
    except JwksUnavailable as exc:
        raise GatewayError(503, str(exc), "server_error", code="jwks_unavailable") from None
    except JwtError as exc:
        raise GatewayError(401, str(exc), "authentication_error", code="invalid_token") from None
    return gw.authority.token_caller(identity)


async def identify(gw: Gateway, request: HTTPConnection) -> Caller:
    """The caller of a request: a token's, a key's, or `local` when auth is off."""
    x_api_key = request.scope["path"].startswith(ANTHROPIC_PREFIX)
    credential = request_key(request, x_api_key=x_api_key)
    where = "Authorization: Bearer <key> or x-api-key: <key>" if x_api_key else (
        "Authorization: Bearer <key>"
    )  # fmt: skip
    found = await caller_for(gw, credential, where)
    if gw.auth_required and found.by_key:
        request.scope[SCOPE_KEY] = credential  # its streams end if it is revoked (KeyWatch)
    return found


async def caller_for(
    gw: Gateway, credential: str, where: str = "Authorization: Bearer <key>"
) -> Caller:
    """The caller a credential ("": none) names: a token's, a key's, or `local` when auth
    is off; 401 when refused (`where`: how to send one). HTTP, WebSocket and gRPC all
    authenticate here."""
    if not gw.auth_required:
        return local_caller(LOCAL_PRINCIPAL)
    if gw.authority.verifier is not None and looks_like_jwt(credential):
        return await verify_token(gw, credential)
    who = gw.principal_for(credential or None)
    if who is None:
        raise GatewayError(
            401, f"a valid gateway API key is required ({where}; keys come from "
            "`dskit keys create`)", "authentication_error", code="invalid_api_key",
        )  # fmt: skip
    return gw.authority.key_caller(who)


async def token_login(gw: Gateway, token: str) -> Response:
    """`POST /v1/login {"token"}`: the verified token as the page's HttpOnly cookie, for
    as long as the token lives; the answer says when that is, and how the page renews it."""
    caller = await verify_token(gw, token)
    assert caller.expires_at is not None and gw.authority.verifier is not None
    web = gw.authority.config.web
    result = LoginResult(
        principal=caller.principal, roles=list(caller.roles), expires_at=caller.expires_at,
        refresh_url=web.refresh_url, refresh_before_seconds=web.refresh_before_seconds,
    )  # fmt: skip
    response = Response(orjson.dumps(result.model_dump()), media_type="application/json")
    lifetime = max(0, int(caller.expires_at - gw.authority.verifier.clock()))
    response.set_cookie(COOKIE, token, max_age=lifetime, httponly=True, samesite="strict", path="/")
    return response


def check(caller: Caller, permission: Permission | None) -> None:
    if permission is None or not caller.may(permission):
        what = permission.value if permission is not None else "a permission (none is set)"
        raise GatewayError(
            403, f"this caller's roles do not grant {what}", "permission_error",
            code="forbidden",
        )  # fmt: skip


class AccessGuard:
    """Authenticates and authorises every request before its route runs."""

    def __init__(self, app: ASGIApp, gw: Gateway, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.gw = gw
        self.table = RouteTable(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        permission = self.table.permission(scope)
        if permission is Permission.PUBLIC:
            await self.app(scope, receive, send)
            return
        try:
            caller = await identify(self.gw, HTTPConnection(scope))
            check(caller, permission)
        except GatewayError as error:
            if scope["type"] == "websocket":
                await deny(scope, send, error)  # the same refusal as the edge's
            else:
                await denied(scope["path"], error)(scope, receive, send)
            return
        scope[SCOPE_CALLER] = caller
        await self.app(scope, receive, send)
