"""Who may do what: permissions, the roles → permissions matrix, the route table.

Every route has one permission in `ROUTE_PERMISSIONS` (by its path template), checked
for every request in one place (`_guard.AccessGuard`, before any route runs). A caller
is a `Caller`: its principal and the permissions its roles grant (`Authority`). Roles
come from a token's claims, or for a gateway API key the configured key role. With no
auth at all (no keys, no issuers) the one caller is `local`, who may do everything.

The auth config file (`dskit serve --auth-config FILE`, TOML or JSON) holds the issuers
(`_jwt.IssuerSettings`), the matrix and the key role; `load_auth_config` validates it
and fails with one line naming the file and the field.
"""

from __future__ import annotations

import enum
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dskit.gateway.access._jwt import Clock, Identity, IssuerSettings, JwtVerifier


class Permission(enum.StrEnum):
    PUBLIC = "public"  # no credential needed (health, login, the page itself)
    CHAT = "chat"  # chat completions, models, the Anthropic and Responses relays
    SESSIONS = "sessions"  # create, list, read, message and cancel one's own sessions
    READ_ANY_SESSION = "sessions.read_any"  # read other principals' sessions (support)
    KEYS = "keys"  # manage gateway API keys (no HTTP route yet: the CLI does it)
    METRICS = "metrics"  # /metrics (Prometheus; usage is counted there)


GRANTABLE = tuple(p for p in Permission if p is not Permission.PUBLIC)
ALL = frozenset(Permission)
KEY_ROLE = "user"
DEFAULT_ROLES: dict[str, list[Permission]] = {
    "user": [Permission.CHAT, Permission.SESSIONS, Permission.METRICS],
    "support": [Permission.CHAT, Permission.SESSIONS, Permission.READ_ANY_SESSION],
    "admin": list(GRANTABLE),
}

_SESSION = "/v1/sessions/{session_id}"
_ANSWER = _SESSION + "/answers/{answer_id}"
ROUTE_PERMISSIONS: dict[str, Permission] = {
    "/v1/chat/completions": Permission.CHAT,
    "/v1/models": Permission.CHAT,
    "/anthropic/v1/messages": Permission.CHAT,
    "/anthropic/v1/messages/count_tokens": Permission.CHAT,
    "/v1/responses": Permission.CHAT,
    "/responses": Permission.CHAT,
    "/v1/sessions": Permission.SESSIONS,
    _SESSION: Permission.SESSIONS,
    _SESSION + "/messages": Permission.SESSIONS,
    _SESSION + "/stream": Permission.SESSIONS,
    _SESSION + "/cancel": Permission.SESSIONS,
    _SESSION + "/ws": Permission.SESSIONS,
    _ANSWER: Permission.SESSIONS,
    _ANSWER + "/stream": Permission.SESSIONS,
    _ANSWER + "/events": Permission.SESSIONS,
    _ANSWER + "/tool_results": Permission.SESSIONS,
    "/metrics": Permission.METRICS,
    "/healthz": Permission.PUBLIC,
    "/readyz": Permission.PUBLIC,
    "/v1/gateway": Permission.PUBLIC,
    "/v1/login": Permission.PUBLIC,
    "/v1/logout": Permission.PUBLIC,
    "/": Permission.PUBLIC,
    "/static": Permission.PUBLIC,
    "/openapi.json": Permission.PUBLIC,
    "/docs": Permission.PUBLIC,
    "/docs/oauth2-redirect": Permission.PUBLIC,
    "/redoc": Permission.PUBLIC,
}


class AuthConfigError(ValueError):
    """The auth config file is unreadable or invalid (one line: file, field, problem)."""


class KeysSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str = KEY_ROLE  # the role of every gateway API key


class WebSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where the page gets a fresh token before its cookie's token expires: it POSTs
    # there (with its cookies) and expects `{"token": "<jwt>"}`; without one it re-prompts.
    refresh_url: str | None = Field(default=None, pattern=r"^(https?://|/)")
    refresh_before_seconds: float = Field(default=60.0, ge=0, le=3600)


class AuthConfig(BaseModel):
    """The auth config file: issuers, the role matrix, the key role, the page's refresh."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuers: list[IssuerSettings] = Field(default_factory=list)
    roles: dict[str, list[Permission]] = Field(default_factory=lambda: dict(DEFAULT_ROLES))
    keys: KeysSettings = Field(default_factory=KeysSettings)
    web: WebSettings = Field(default_factory=WebSettings)

    @model_validator(mode="after")
    def _consistent(self) -> AuthConfig:
        if self.keys.role not in self.roles:
            raise ValueError(f"keys.role {self.keys.role!r} is not a role in [roles]")
        if Permission.PUBLIC in {p for granted in self.roles.values() for p in granted}:
            raise ValueError("'public' is not a permission to grant")
        names = [i.name for i in self.issuers]
        issuers = [i.issuer for i in self.issuers]
        if len(set(names)) != len(names) or len(set(issuers)) != len(issuers):
            raise ValueError("issuer names and issuer URLs must be unique")
        return self


def load_auth_config(path: str | Path) -> AuthConfig:
    """The validated config of a `.toml` or `.json` file (`AuthConfigError` otherwise)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AuthConfigError(f"auth config {path}: {exc}") from None
    try:
        return AuthConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise AuthConfigError(f"auth config {path}: {where}: {first['msg']}{more}") from None


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its principal and what it may do."""

    principal: str
    permissions: frozenset[Permission]
    roles: tuple[str, ...] = ()
    expires_at: float | None = None  # a token's exp
    by_key: bool = False  # a gateway API key's caller (its streams end when it is revoked)
    valid_until: float | None = None  # a token's: its streams end then (exp + leeway)

    def may(self, permission: Permission) -> bool:
        return permission is Permission.PUBLIC or permission in self.permissions


class Authority:
    """The auth config composed once: the matrix, the key role, the token verifier."""

    def __init__(self, config: AuthConfig | None, *, clock: Clock | None = None) -> None:
        self.config = config or AuthConfig()
        self.matrix = {role: frozenset(granted) for role, granted in self.config.roles.items()}
        issuers = self.config.issuers
        self.verifier = (
            (JwtVerifier(issuers, clock=clock) if clock else JwtVerifier(issuers))
            if issuers
            else None
        )

    def permissions(self, roles: tuple[str, ...]) -> frozenset[Permission]:
        """What the roles grant together (unknown roles grant nothing)."""
        return frozenset().union(*(self.matrix.get(role, frozenset()) for role in roles))

    def key_caller(self, principal: str) -> Caller:
        roles = (self.config.keys.role,)
        return Caller(principal, self.permissions(roles), roles, by_key=True)

    def token_caller(self, identity: Identity) -> Caller:
        perms = self.permissions(identity.roles)
        until = identity.valid_until if identity.valid_until is not None else identity.expires_at
        return Caller(
            identity.principal, perms, identity.roles, identity.expires_at, valid_until=until
        )


def local_caller(principal: str) -> Caller:
    """The caller when auth is off: may do everything."""
    return Caller(principal, ALL)
