"""What every route asks for: the gateway, the caller's principal, rate limits, owned sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from dskit.gateway._compose import Gateway
from dskit.gateway._errors import GatewayError
from dskit.gateway.access._matrix import Caller, Permission

COOKIE = "dskit_gateway_key"
SCOPE_CALLER = "dskit.caller"
bearer = HTTPBearer(auto_error=False, description="A gateway API key (`dskit keys create`)")
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # session and answer ids, wherever they arrive
SessionId = Annotated[str, Path(pattern=ID_PATTERN, description="A session id")]
AnswerId = Annotated[str, Path(pattern=ID_PATTERN, description="An answer id")]


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def _gateway(request: Request) -> Gateway:
    """`gateway` as a dependency: async, so FastAPI calls it on the loop (a plain `def`
    dependency runs in a worker thread: a thread hop on every request)."""
    return gateway(request)


def caller_of(request: HTTPConnection) -> Caller:
    """The caller `AccessGuard` left in the scope (401 if none: an unguarded route)."""
    caller: Caller | None = request.scope.get(SCOPE_CALLER)
    if caller is None:
        raise GatewayError(401, "authentication is required", "authentication_error",
                           code="invalid_api_key")  # fmt: skip
    return caller


def request_key(request: HTTPConnection, *, x_api_key: bool = False) -> str:
    """The key a request carries (Bearer wins over `x-api-key`, as at DeepSeek)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    if x_api_key and request.headers.get("x-api-key", "").strip():
        return request.headers["x-api-key"].strip()
    return request.cookies.get(COOKIE, "").strip()


async def take_token(gw: Gateway, who: str) -> None:
    """Take a token from the principal's bucket (429 with Retry-After when it has none)."""
    wait = await gw.limiter.acquire(who)
    if wait > 0:
        gw.metrics.errors.labels("rate_limited").inc()
        raise GatewayError(
            429, "rate limit reached for this key; retry later", "rate_limit_error",
            code="rate_limited", retry_after=wait,
        )  # fmt: skip


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """The caller (the security scheme parameter documents bearer auth in OpenAPI)."""
    return caller_of(request).principal


Principal = Annotated[str, Depends(principal)]
GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def rate_limited(gw: GatewayDep, who: Principal) -> str:
    """The principal, after taking a token from its bucket."""
    await take_token(gw, who)
    return who


Limited = Annotated[str, Depends(rate_limited)]


async def session_reader(request: Request, session_id: SessionId, who: Principal) -> str:
    """Whose session a read may see: the caller's own, or for a caller whose roles grant
    `sessions.read_any` (support staff), the session's owner (so any session is read)."""
    if caller_of(request).may(Permission.READ_ANY_SESSION):
        return gateway(request).keys.owner(session_id) or who
    return who


SessionReader = Annotated[str, Depends(session_reader)]


def upstream_headers(request: Request, gw: Gateway) -> dict[str, str]:
    """`X-Sim-*` fault headers pass through to the built-in simulator only (or to any
    upstream with `forward_sim_headers`): one caller's faults would otherwise open the
    breaker every caller shares."""
    if not forwards_sim_headers(gw):
        return {}
    return {  # raw header names are lower case; only the matches are decoded
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in request.scope["headers"]
        if k.startswith(b"x-sim-")
    }


def forwards_sim_headers(gw: Gateway) -> bool:
    """Whether callers' `x-sim-*` headers (or gRPC metadata) go upstream (see above)."""
    return gw.mode == "simulator" or gw.settings.forward_sim_headers
