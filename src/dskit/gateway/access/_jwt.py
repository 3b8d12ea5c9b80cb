"""Bearer JWTs from configured issuers (an identity provider's access tokens).

A token is verified against the issuer its `iss` claim names: the issuer's static public
key (PEM), or the key its header's `kid` names in the issuer's JWKS. A JWKS is fetched
once and cached for its `Cache-Control: max-age` (else the configured TTL); a `kid` not
in the cache refetches it, at most once per `min_refetch_seconds`, so a flood of forged
kids costs one fetch. Keys dropped from a refetched set stay usable until their own
cache time ends (a rotation never cuts off tokens already issued).

Only RS256, ES256 and EdDSA are accepted, and only the one the key itself is for: `none`
and HS* never verify (a public key is no shared secret). `iss` and `aud` are checked by
PyJWT; `exp` (required) and `nbf` against the injected clock, with the issuer's leeway.

The principal is `<issuer name>:<claim>` (default claim `sub`): never a gateway key's
principal (those have no `:`), never another issuer's. Roles come from a claim (default
`roles`; a dotted path reaches nested ones) holding a list or a space-separated string.

    JwtError (401: the token is not accepted)
    JwksUnavailable (503: the issuer's keys could not be fetched)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BaseModel, ConfigDict, Field, model_validator

Algorithm = Literal["RS256", "ES256", "EdDSA"]
ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")
JWT_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$"
JWT_SHAPE = re.compile(JWT_PATTERN)
MAX_TOKEN_CHARS = 8192
MAX_JWKS_TTL = 86400.0
Clock = Callable[[], float]
Fetch = Callable[[str], Awaitable[tuple[Any, float | None]]]


class JwtError(Exception):
    """The token is not accepted (the message says why, for the 401)."""


class JwksUnavailable(JwtError):
    """The issuer's JWKS could not be fetched (and no cached key fits)."""


class IssuerSettings(BaseModel):
    """One trusted issuer, as the auth config file names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    issuer: str = Field(min_length=1)
    audience: str | list[str]
    jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    public_key: str | None = None
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ALGORITHMS), min_length=1)
    principal_claim: str = "sub"
    roles_claim: str = "roles"
    leeway_seconds: float = Field(default=30.0, ge=0, le=600)
    jwks_ttl_seconds: float = Field(default=300.0, gt=0, le=MAX_JWKS_TTL)
    min_refetch_seconds: float = Field(default=30.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        if (self.jwks_url is None) == (self.public_key is None):
            raise ValueError("give exactly one of jwks_url and public_key")
        if self.public_key is not None:
            _static_key(self.public_key)  # a bad PEM fails at startup
        return self


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token says the caller is."""

    principal: str
    roles: tuple[str, ...]
    expires_at: float
    valid_until: float | None = None  # exp plus the issuer's leeway (None: exp)


def looks_like_jwt(credential: str) -> bool:
    return len(credential) <= MAX_TOKEN_CHARS and JWT_SHAPE.match(credential) is not None


def _algorithm_of(key: Any) -> Algorithm:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("public_key must be an RSA, P-256 or Ed25519 public key (PEM)")


def _static_key(pem: str) -> tuple[Any, Algorithm]:
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise ValueError("public_key is not a PEM public key") from None
    return key, _algorithm_of(key)


def max_age(cache_control: str | None) -> float | None:
    """The `max-age` of a `Cache-Control` header, if it has one."""
    found = re.search(r"(?:^|[,\s])max-age=(\d+)", cache_control or "")
    return float(found.group(1)) if found else None


async def http_fetch(url: str) -> tuple[Any, float | None]:
    """GET a JWKS: its JSON and its `Cache-Control: max-age`."""
    import httpx2

    async with httpx2.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        response = await client.get(url, headers={"Accept": "application/json"})
    response.raise_for_status()
    return response.json(), max_age(response.headers.get("cache-control"))


@dataclass(slots=True)
class _Cached:
    key: jwt.PyJWK
    expires_at: float


@dataclass(slots=True)
class JwksCache:
    """One issuer's keys by `kid`, refetched when stale or when a `kid` is unknown."""

    url: str
    ttl: float
    min_refetch: float
    clock: Clock
    fetch: Fetch
    keys: dict[str, _Cached] = field(default_factory=dict)
    fresh_until: float = float("-inf")
    last_fetch: float = float("-inf")
    fetches: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def key(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            now = self.clock()
            stale = now >= self.fresh_until
            unknown = self._usable(kid, now) is None
            if stale or (unknown and now - self.last_fetch >= self.min_refetch):
                await self._refetch(now)
            found = self._usable(kid, now)
        if found is None:
            raise JwtError(f"the issuer has no key {kid!r}")
        return found

    def _usable(self, kid: str, now: float) -> jwt.PyJWK | None:
        cached = self.keys.get(kid)
        return cached.key if cached is not None and now < cached.expires_at else None

    async def _refetch(self, now: float) -> None:
        self.last_fetch = now
        self.fetches += 1
        try:
            data, age = await self.fetch(self.url)
            served = _parse_jwks(data)
        except Exception as exc:  # keep the cache; say what failed
            self.fresh_until = now + self.min_refetch  # retry after the rate limit
            if any(now < c.expires_at for c in self.keys.values()):
                return
            raise JwksUnavailable(
                f"cannot fetch the issuer's keys ({type(exc).__name__})"
            ) from None
        ttl = min(max(age, self.min_refetch), MAX_JWKS_TTL) if age is not None else self.ttl
        self.fresh_until = now + ttl
        for kid, key in served.items():
            self.keys[kid] = _Cached(key, now + ttl)
        self.keys = {k: c for k, c in self.keys.items() if now < c.expires_at}


def _parse_jwks(data: Any) -> dict[str, jwt.PyJWK]:
    """The usable keys of a JWKS by kid (keys of other algorithms or uses are skipped)."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.key_id and key.algorithm_name in ALGORITHMS:
            keys[key.key_id] = key
    return keys


class Issuer:
    """One issuer's settings with its key source."""

    def __init__(self, settings: IssuerSettings, clock: Clock, fetch: Fetch) -> None:
        self.settings = settings
        self.static = _static_key(settings.public_key) if settings.public_key else None
        url = settings.jwks_url
        self.jwks = None if url is None else JwksCache(
            url, settings.jwks_ttl_seconds, settings.min_refetch_seconds, clock, fetch
        )  # fmt: skip

    async def key_for(self, header: Mapping[str, Any]) -> Any:
        """The verification key for a token's header (its alg must be the key's)."""
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise JwtError(f"algorithm {alg!r} is not accepted")
        key_alg: str
        if self.static is not None:
            key, key_alg = self.static
        else:
            assert self.jwks is not None
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise JwtError("the token has no kid")
            jwk = await self.jwks.key(kid)
            key, key_alg = jwk.key, jwk.algorithm_name
        if alg != key_alg:
            raise JwtError(f"algorithm {alg!r} does not match the key")
        return key


class JwtVerifier:
    """Verifies bearer JWTs of the configured issuers; `clock` is epoch seconds."""

    def __init__(
        self, issuers: Sequence[IssuerSettings], *, clock: Clock = time.time,
        fetch: Fetch = http_fetch,
    ) -> None:  # fmt: skip
        self.clock = clock
        self.issuers = {s.issuer: Issuer(s, clock, fetch) for s in issuers}

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise JwtError("the token is not a well-formed JWT") from None
        issuer = self.issuers.get(str(claims.get("iss")))
        if issuer is None:
            raise JwtError("the token's issuer is not trusted")
        key = await issuer.key_for(header)
        s = issuer.settings
        try:
            claims = jwt.decode(
                token, key, algorithms=[header["alg"]], audience=s.audience, issuer=s.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["exp", "iss", "aud"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise JwtError(f"the token is not accepted: {exc}") from None
        expires_at = self._check_times(claims, s.leeway_seconds)
        return Identity(
            _principal(claims, s), _roles(claims, s.roles_claim), expires_at,
            expires_at + s.leeway_seconds,
        )  # fmt: skip

    def _check_times(self, claims: Mapping[str, Any], leeway: float) -> float:
        now = self.clock()
        exp, nbf = claims.get("exp"), claims.get("nbf", float("-inf"))
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise JwtError("exp and nbf must be numbers")
        if isinstance(exp, bool) or isinstance(nbf, bool):
            raise JwtError("exp and nbf must be numbers")
        if exp <= now - leeway:
            raise JwtError("the token has expired")
        if nbf > now + leeway:
            raise JwtError("the token is not yet valid")
        return float(exp)


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _principal(claims: Mapping[str, Any], s: IssuerSettings) -> str:
    value = _claim(claims, s.principal_claim)
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value):
        raise JwtError(f"the token has no {s.principal_claim!r} claim")
    return f"{s.name}:{value}"


def _roles(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    value = _claim(claims, path)
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(r for r in value if isinstance(r, str))
    return ()
