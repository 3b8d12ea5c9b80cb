"""Bearer JWTs from configured issuers, the access matrix, the page's token sign-in.

Keys are generated here (RSA, P-256, Ed25519); a JWKS is served over loopback by
`LocalHTTPServer`; the gateway runs for real on uvicorn with an injected clock (no sleeps:
token times and JWKS cache times are the clock's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.routing import iter_route_contexts

from dskit.cli import main
from dskit.gateway import GatewaySettings, KeyStore
from dskit.gateway.access._matrix import (
    ROUTE_PERMISSIONS,
    AuthConfig,
    AuthConfigError,
    Permission,
    load_auth_config,
)
from tests.conftest import LocalHTTPServer
from tests.gateway.conftest import GatewayServer

NOW = 2_000_000_000.0
ISSUER = "https://idp.test/"
STATIC_ISSUER = "https://static.test/"
AUDIENCE = "dskit"
LEEWAY, TTL, MIN_REFETCH = 30.0, 300.0, 30.0
ROLES: dict[str, list[str]] = {
    "user": ["chat", "sessions"],
    "support": ["sessions", "sessions.read_any"],
    "metrics": ["metrics"],
    "admin": ["chat", "sessions", "sessions.read_any", "keys", "metrics"],
    "nobody": [],
}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Jwks:
    """A JWKS endpoint: `keys` (public JWKs) as served now, `fetches` counted."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.cache_control: str | None = None
        self.fetches = 0
        self._lock = threading.Lock()
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with jwks._lock:
                    jwks.fetches += 1
                    body = orjson.dumps({"keys": jwks.keys})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if jwks.cache_control:
                    self.send_header("Cache-Control", jwks.cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = LocalHTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}/jwks.json"

    def close(self) -> None:
        self._server.close()


class Signer:
    """A private key with its kid and algorithm; `token(**claims)` signs."""

    def __init__(self, key: Any, alg: str, kid: str, clock: Clock, iss: str = ISSUER) -> None:
        self.key, self.alg, self.kid, self.clock, self.iss = key, alg, kid, clock, iss

    def jwk(self) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algo.to_jwk(self.key.public_key()))
        return {**data, "kid": self.kid, "use": "sig"}

    def pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def claims(self, **claims: Any) -> dict[str, Any]:
        base = {"iss": self.iss, "aud": AUDIENCE, "sub": "alice", "exp": self.clock.now + 600,
                "roles": ["user"], "realm": {"roles": ["user"]}}  # fmt: skip
        return {k: v for k, v in {**base, **claims}.items() if v is not None}

    def token(self, **claims: Any) -> str:
        headers = {"kid": self.kid}
        return jwt.encode(self.claims(**claims), self.key, algorithm=self.alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    head = _b64(orjson.dumps(header)) + "." + _b64(orjson.dumps(claims))
    if secret is None:
        return head + "."
    return head + "." + _b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.close()


@pytest.fixture
def signers(clock: Clock) -> dict[str, Signer]:
    return {
        "rsa": Signer(rsa.generate_private_key(65537, 2048), "RS256", "rsa-1", clock),
        "ec": Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "ec-1", clock),
        "ed": Signer(ed25519.Ed25519PrivateKey.generate(), "EdDSA", "ed-1", clock),
        "static": Signer(
            ec.generate_private_key(ec.SECP256R1()), "ES256", "s", clock, STATIC_ISSUER
        ),
    }


def _config(jwks: Jwks, static: Signer) -> dict[str, Any]:
    return {
        "issuers": [
            {
                "name": "idp",
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": jwks.url,
                "leeway_seconds": LEEWAY,
                "jwks_ttl_seconds": TTL,
                "min_refetch_seconds": MIN_REFETCH,
            },
            {
                "name": "static",
                "issuer": STATIC_ISSUER,
                "audience": [AUDIENCE, "other"],
                "public_key": static.pem(),
                "algorithms": ["ES256"],
                "roles_claim": "realm.roles",
            },
        ],
        "roles": ROLES,
        "keys": {"role": "user"},
        "web": {"refresh_url": "/auth/refresh"},
    }


@pytest.fixture
def jwt_gateway(
    sim: Any, tmp_path: Path, clock: Clock, jwks: Jwks, signers: dict[str, Signer],
    no_proxy_env: Any,
) -> Iterator[GatewayServer]:  # fmt: skip
    jwks.keys = [signers[name].jwk() for name in ("rsa", "ec", "ed")]
    settings = GatewaySettings(
        upstream=sim.base_url, api_key="sk-test-upstream-0123456789",
        store=str(tmp_path / "sessions.sqlite3"), keys_path=str(tmp_path / "gateway.sqlite3"),
        heartbeat_seconds=0.5, forward_sim_headers=True,
        auth=AuthConfig.model_validate(_config(jwks, signers["static"])),
    )  # fmt: skip
    server = GatewayServer(settings, clock=clock).start()
    yield server
    server.stop()


def _status(server: GatewayServer, token: str, path: str = "/v1/sessions") -> int:
    with server.client(token) as http:
        return http.get(path).status_code


def _error(server: GatewayServer, token: str) -> dict[str, Any]:
    with server.client(token) as http:
        response = http.get("/v1/sessions")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    error: dict[str, Any] = response.json()["error"]
    return error


# ---- verification -----------------------------------------------------------------------


def test_valid_tokens_of_each_algorithm_name_their_principal(
    jwt_gateway: GatewayServer, signers: dict[str, Signer]
) -> None:
    for name, signer in signers.items():
        roles = {"realm": {"roles": ["user"]}} if name == "static" else {"roles": ["user"]}
        token = signer.token(sub=f"u-{name}", **roles)
        with jwt_gateway.client(token) as http:
            created = http.post("/v1/sessions", json={})
            assert created.status_code == 201, (name, created.text)
            assert [s["id"] for s in http.get("/v1/sessions").json()["data"]] == [
                created.json()["id"]
            ]
        issuer = "static" if name == "static" else "idp"
        assert jwt_gateway.gw.keys.owner(created.json()["id"]) == f"{issuer}:u-{name}"


def test_wrong_audience_issuer_algorithm_and_times_are_refused(
    jwt_gateway: GatewayServer, signers: dict[str, Signer], clock: Clock
) -> None:
    rsa_signer, now = signers["rsa"], clock.now
    refused = {
        "wrong aud": rsa_signer.token(aud="someone-else"),
        "no aud": rsa_signer.token(aud=None),
        "untrusted iss": rsa_signer.token(iss="https://evil.test/"),
        "no exp": rsa_signer.token(exp=None),
        "expired past leeway": rsa_signer.token(exp=now - LEEWAY),
        "not yet valid past leeway": rsa_signer.token(nbf=now + LEEWAY + 1),
        "alg none": _unsigned(
            {"alg": "none", "kid": "rsa-1", "typ": "JWT"}, rsa_signer.claims(), None
        ),
        "HS256 with the public key": _unsigned(
            {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"},
            rsa_signer.claims(),
            rsa_signer.pem().encode(),
        ),
        "HS256 with the static PEM": _unsigned(
            {"alg": "HS256", "typ": "JWT"},
            signers["static"].claims(),
            signers["static"].pem().encode(),
        ),
        "RS256 header on an EC kid": _unsigned(
            {"alg": "RS256", "kid": "ec-1"}, rsa_signer.claims(), b"x"
        ),
        "tampered": rsa_signer.token()[:-4] + "AAAA",
    }
    for why, token in refused.items():
        error = _error(jwt_gateway, token)
        assert error["code"] == "invalid_token", (why, error)
    accepted = {
        "expired within leeway": rsa_signer.token(exp=now - LEEWAY + 1),
        "nbf at the leeway's edge": rsa_signer.token(nbf=now + LEEWAY),
        "nbf now": rsa_signer.token(nbf=now),
    }
    for why, token in accepted.items():
        assert _status(jwt_gateway, token) == 200, why
    edge = rsa_signer.token(exp=now + 10)
    assert _status(jwt_gateway, edge) == 200
    clock.now += 10 + LEEWAY  # exp <= now - leeway: expired from this instant on
    assert _error(jwt_gateway, edge)["message"] == "the token has expired"


def test_unknown_kid_refetches_at_most_once_per_interval_then_refuses(
    jwt_gateway: GatewayServer, signers: dict[str, Signer], clock: Clock, jwks: Jwks
) -> None:
    assert _status(jwt_gateway, signers["rsa"].token()) == 200
    assert jwks.fetches == 1
    clock.now += MIN_REFETCH  # the last fetch is old enough for one more
    ghost = Signer(signers["rsa"].key, "RS256", "ghost", clock)
    assert "no key 'ghost'" in _error(jwt_gateway, ghost.token())["message"]
    assert jwks.fetches == 2
    for kid in ("ghost", "ghost-2", "ghost-3"):  # a flood of forged kids: no more fetches
        _error(jwt_gateway, Signer(signers["rsa"].key, "RS256", kid, clock).token())
    assert jwks.fetches == 2
    assert _status(jwt_gateway, signers["ec"].token()) == 200  # known kids still verify
    assert jwks.fetches == 2


def test_rotation_new_kid_accepted_old_kept_until_ttl(
    jwt_gateway: GatewayServer, signers: dict[str, Signer], clock: Clock, jwks: Jwks
) -> None:
    old = signers["rsa"]
    assert _status(jwt_gateway, old.token()) == 200
    new = Signer(rsa.generate_private_key(65537, 2048), "RS256", "rsa-2", clock)
    jwks.keys = [new.jwk()]  # the provider rotates: rsa-1 is no longer served
    clock.now += MIN_REFETCH
    assert _status(jwt_gateway, new.token()) == 200  # unknown kid: refetched, accepted
    assert jwks.fetches == 2
    assert _status(jwt_gateway, old.token()) == 200  # cached from the first fetch
    clock.now += TTL - MIN_REFETCH  # the first fetch's keys expire now
    assert "no key 'rsa-1'" in _error(jwt_gateway, old.token())["message"]
    assert _status(jwt_gateway, new.token()) == 200
    assert jwks.fetches == 3  # the stale set was refetched once


def test_cache_control_max_age_sets_the_cache_time(
    jwt_gateway: GatewayServer, signers: dict[str, Signer], clock: Clock, jwks: Jwks
) -> None:
    jwks.cache_control = "public, max-age=60"
    assert _status(jwt_gateway, signers["ed"].token()) == 200
    clock.now += 59
    assert _status(jwt_gateway, signers["ed"].token()) == 200
    assert jwks.fetches == 1
    clock.now += 1
    assert _status(jwt_gateway, signers["ed"].token()) == 200
    assert jwks.fetches == 2


# ---- roles and the matrix --------------------------------------------------------------


def test_roles_from_claims_and_support_reads_other_sessions(
    jwt_gateway: GatewayServer, signers: dict[str, Signer]
) -> None:
    s = signers["rsa"]
    alice = s.token(sub="alice", roles=["user"])
    bob = s.token(sub="bob", roles="user")  # a space-separated string works too
    support = s.token(sub="sam", roles="support nobody")
    metrics = s.token(sub="prom", roles=["metrics"])
    with jwt_gateway.client(alice) as a:
        sid = a.post("/v1/sessions", json={}).json()["id"]
        answer = a.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}).json()
        assert answer["status"] == "completed"
    reads = [
        f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/answers/{answer['answer_id']}",
        f"/v1/sessions/{sid}/answers/{answer['answer_id']}/events",
    ]  # fmt: skip
    with jwt_gateway.client(support) as sam, jwt_gateway.client(bob) as b:
        for path in reads:
            assert sam.get(path).status_code == 200, path
            assert b.get(path).status_code == 404, path
        assert sam.get(f"/v1/sessions/{sid}").json()["messages"][0]["content"] == "hi"
        assert sam.delete(f"/v1/sessions/{sid}").status_code == 404  # reading only
        assert sam.post(f"/v1/sessions/{sid}/cancel").status_code == 404
        assert sam.post("/v1/chat/completions", json={}).status_code == 403
        assert sam.get("/metrics").status_code == 403
        assert b.get("/metrics").json()["error"]["type"] == "permission_error"
    assert _status(jwt_gateway, metrics, "/metrics") == 200
    assert _status(jwt_gateway, metrics, "/v1/sessions") == 403
    assert _status(jwt_gateway, s.token(roles=["unknown-role"]), "/v1/sessions") == 403


def test_gateway_keys_get_the_configured_key_role(
    jwt_gateway: GatewayServer, tmp_path: Path
) -> None:
    with KeyStore(tmp_path / "gateway.sqlite3") as keys:
        key, _ = keys.create("kim")
    with jwt_gateway.client(key) as http:
        assert http.post("/v1/sessions", json={}).status_code == 201
        assert http.get("/metrics").status_code == 403  # role "user" has no metrics
        anthropic = http.post("/anthropic/v1/messages", json={}, headers={"x-api-key": "x"})
        assert anthropic.status_code != 403
    with jwt_gateway.client() as anon:
        refused = anon.get("/metrics", headers={"x-api-key": key})  # not an Anthropic route
        assert refused.status_code == 401
        anthropic = anon.post("/anthropic/v1/messages", json={}, headers={"x-api-key": "bad"})
        assert anthropic.status_code == 401 and anthropic.json()["type"] == "error"


def _routes(server: GatewayServer) -> list[tuple[str, str]]:
    found = []
    for context in iter_route_contexts(server.app.routes):
        if context.path is None:
            continue
        methods = sorted((context.methods or {"GET"}) - {"HEAD"})
        found += [(method, context.path) for method in methods]
    return found


def test_every_route_checks_the_matrix_for_every_role(
    jwt_gateway: GatewayServer, signers: dict[str, Signer]
) -> None:
    """The table test: every route the app has × every role (and no credential). A new
    route without a permission in ROUTE_PERMISSIONS fails here."""
    routes = _routes(jwt_gateway)
    assert len(routes) > 25
    unlisted = sorted({path for _, path in routes} - set(ROUTE_PERMISSIONS))
    assert unlisted == [], f"routes without a permission in _access.ROUTE_PERMISSIONS: {unlisted}"
    tokens: dict[str | None, str | None] = {
        role: signers["ec"].token(sub=f"t-{role}", roles=[role]) for role in ROLES
    }
    tokens[None] = None
    for method, template in routes:
        permission = ROUTE_PERMISSIONS[template]
        path = template.replace("{session_id}", "s1").replace("{answer_id}", "a1")
        path = path + "/app.js" if template == "/static" else path
        for role, token in tokens.items():
            with jwt_gateway.client(token) as http:
                body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
                status = http.request(method, path, **body).status_code
            if permission is Permission.PUBLIC:
                allowed = True
            else:
                allowed = role is not None and permission.value in ROLES[role]
            expected = "allowed" if allowed else ("401" if role is None else "403")
            got = "allowed" if status not in (401, 403) else str(status)
            assert got == expected, (method, template, role, status)


def test_unlisted_route_is_refused_to_everyone() -> None:
    from starlette.routing import Route

    from dskit.gateway.edge._guard import RouteTable

    async def endpoint(request: Any) -> None:
        pass

    table = RouteTable([Route("/v1/new-thing", endpoint), Route("/v1/x/{y}", endpoint)])
    assert table.permission({"type": "http", "path": "/v1/new-thing"}) is None
    assert table.permission({"type": "websocket", "path": "/v1/x/1"}) is None
    assert table.permission({"type": "http", "path": "/nowhere"}) is Permission.PUBLIC


# ---- the web page ------------------------------------------------------------------------


def test_login_with_a_token_sets_the_cookie_until_expiry(
    jwt_gateway: GatewayServer, signers: dict[str, Signer], clock: Clock
) -> None:
    token = signers["rsa"].token(sub="web", roles=["user"], exp=clock.now + 900)
    with jwt_gateway.client() as http:
        assert http.get("/v1/sessions").status_code == 401
        bad = http.post("/v1/login", json={"token": signers["rsa"].token(aud="x")})
        assert bad.status_code == 401 and "cookie" not in bad.headers.get("set-cookie", "")
        both = http.post("/v1/login", json={"token": token, "key": "sk-gw-x"})
        assert both.status_code == 422
        login = http.post("/v1/login", json={"token": token})
        assert login.status_code == 200, login.text
        assert login.json() == {
            "principal": "idp:web", "roles": ["user"], "expires_at": clock.now + 900,
            "refresh_url": "/auth/refresh", "refresh_before_seconds": 60.0,
        }  # fmt: skip
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "max-age=900" in cookie and "samesite=strict" in cookie
        assert http.get("/v1/sessions").status_code == 200  # the cookie alone
        clock.now += 900 + LEEWAY
        assert http.get("/v1/sessions").json()["error"]["message"] == "the token has expired"


def test_page_renews_its_token_before_expiry() -> None:
    from importlib import resources

    script = (resources.files("dskit.gateway") / "static" / "app.js").read_text()
    assert "refresh_before_seconds" in script and "refresh_url" in script
    html = (resources.files("dskit.gateway") / "static" / "index.html").read_text()
    assert "Gateway key or token" in html


# ---- the config file ---------------------------------------------------------------------

GOOD_ISSUER = 'name = "idp"\nissuer = "https://idp.test/"\naudience = "dskit"\n'
BAD_CONFIGS: list[tuple[str, str, str]] = [
    ("toml", "[[issuers]]\n" + GOOD_ISSUER, "give exactly one of jwks_url and public_key"),
    ("toml", "[[issuers]]\n" + GOOD_ISSUER + 'jwks_url = "https://x/j"\nalgorithms = ["HS256"]',
     "issuers.0.algorithms.0"),
    ("toml", "[[issuers]]\n" + GOOD_ISSUER + 'public_key = "not a pem"', "not a PEM public key"),
    ("toml", "[[issuers]]\n" + GOOD_ISSUER + 'jwks_url = "ftp://x"', "issuers.0.jwks_url"),
    ("toml", '[roles]\nuser = ["chat", "fly"]', "roles.user.1"),
    ("toml", '[roles]\nuser = ["public"]', "'public' is not a permission to grant"),
    ("toml", '[keys]\nrole = "ghost"', "keys.role 'ghost' is not a role"),
    ("toml", "[[issuers]]\n" + GOOD_ISSUER + 'jwks_url = "https://x/j"\nleeway = 5',
     "issuers.0.leeway: Extra inputs are not permitted"),
    ("toml", "issuers = [", "auth config"),
    ("json", '{"roles": {"user": "chat"}}', "roles.user"),
]  # fmt: skip


@pytest.mark.parametrize(("suffix", "text", "expected"), BAD_CONFIGS)
def test_config_errors_are_one_clear_line(
    tmp_path: Path, suffix: str, text: str, expected: str
) -> None:
    path = tmp_path / f"auth.{suffix}"
    path.write_text(text)
    with pytest.raises(AuthConfigError) as info:
        load_auth_config(path)
    message = str(info.value)
    assert message.startswith(f"auth config {path}: ") and "\n" not in message
    assert expected in message


def test_config_file_loads_and_the_cli_refuses_a_bad_one(
    tmp_path: Path, signers: dict[str, Signer]
) -> None:
    good = tmp_path / "auth.toml"
    pem = signers["static"].pem()
    good.write_text(
        "[[issuers]]\n" + GOOD_ISSUER + f'public_key = """{pem}"""\n'
        '[roles]\nuser = ["chat"]\nops = ["metrics"]\n'
    )
    config = load_auth_config(good)
    assert config.issuers[0].principal_claim == "sub" and config.keys.role == "user"
    missing = CliRunner().invoke(main, ["serve", "--auth-config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "auth config" in missing.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles]\nuser = ["fly"]')
    result = CliRunner().invoke(main, ["serve", "--auth-config", str(bad)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if "auth config" in line]
    assert len(lines) == 1 and "roles.user.0" in lines[0]


def test_principal_claim_is_configurable(tmp_path: Path, clock: Clock) -> None:
    import asyncio

    from dskit.gateway.access._jwt import IssuerSettings, JwtError, JwtVerifier

    key = ed25519.Ed25519PrivateKey.generate()
    signer = Signer(key, "EdDSA", "k", clock)
    issuer = IssuerSettings(
        name="corp", issuer=ISSUER, audience=AUDIENCE, public_key=signer.pem(),
        principal_claim="email", roles_claim="groups",
    )  # fmt: skip
    verifier = JwtVerifier([issuer], clock=clock)
    identity = asyncio.run(verifier.verify(signer.token(email="a@b.c", groups=["x", 3, "y"])))
    assert identity.principal == "corp:a@b.c" and identity.roles == ("x", "y")
    with pytest.raises(JwtError, match="no 'email' claim"):
        asyncio.run(verifier.verify(signer.token()))


def test_a_token_callers_websocket_is_not_taken_for_a_revoked_key(
    jwt_gateway: GatewayServer, signers: dict[str, Signer]
) -> None:
    """A token has no gateway key to revoke: its WebSocket streams a paced answer to the
    end (the idle-time revocation check used to look the token up as a key, and cut it)."""
    from tests.gateway.test_ws import _connect, _recv, _until_end

    token = signers["rsa"].token(sub="wendy")
    with jwt_gateway.client(token) as http:
        sid = http.post("/v1/sessions", json={"parameters": {"thinking": False}}).json()["id"]
    auth = {"Authorization": f"Bearer {token}", "X-Sim-TTFT-Ms": "1200"}  # an idle wait
    with _connect(jwt_gateway, sid, **auth) as ws:
        ws.send(orjson.dumps({"type": "message", "content": "a paced answer"}).decode())
        assert "answer_id" in _recv(ws)
        frames = list(_until_end(ws))
    assert frames[-1]["event"] == "done", frames[-1]


def test_the_auth_config_example_in_the_docs_loads(tmp_path: Path) -> None:
    """The ```toml example of docs/gateway.md is what an operator copies: it must load."""
    from dskit.gateway.access._matrix import load_auth_config

    doc = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    [example] = re.findall(r"```toml\n(.*?)```", doc, flags=re.S)
    path = tmp_path / "auth.toml"
    path.write_text(example)
    config = load_auth_config(path)
    assert [i.name for i in config.issuers] == ["corp"]
    assert "sessions.read_any" in config.roles["support"]


@pytest.fixture
def fast_watch_gateway(jwt_gateway: GatewayServer, clock: Clock) -> Iterator[GatewayServer]:
    """The JWT gateway, checking its open streams' credentials every 0.1 s."""
    import dataclasses

    settings = dataclasses.replace(jwt_gateway.settings, key_check_seconds=0.1)
    server = GatewayServer(settings, clock=clock).start()
    yield server
    server.stop()


@pytest.mark.parametrize("surface", ["session", "relay"])
def test_a_stream_ends_when_its_token_expires(
    fast_watch_gateway: GatewayServer, signers: dict[str, Signer], clock: Clock, surface: str
) -> None:
    """An open stream outlives no token: once `exp` plus the leeway has passed on the
    token clock, it ends with one `token_expired` error in the stream's own shape."""
    token = signers["rsa"].token(sub="tess", roles=["user"], exp=clock.now + 60)
    slow = {"X-Sim-Token-Ms": "40"}  # a long answer: it would run for seconds
    with fast_watch_gateway.client(token) as http:
        if surface == "session":
            sid = http.post("/v1/sessions", json={"parameters": {"thinking": False}}).json()["id"]
            path, body = f"/v1/sessions/{sid}/messages", {"content": "a long story", "stream": True}
        else:
            path = "/v1/chat/completions"
            body = {"model": "deepseek-flash", "stream": True, "thinking": {"type": "disabled"},
                    "messages": [{"role": "user", "content": "a long story"}]}  # fmt: skip
        with http.stream("POST", path, json=body, headers=slow) as response:
            assert response.status_code == 200, response.read()
            lines = response.iter_lines()
            assert any('"text"' in line or '"content":"' in line for line in lines)
            clock.now += 60 + LEEWAY  # the token's end, on the token clock
            rest = list(lines)  # the stream ends by itself: the client's timeout would raise
    errors = [line for line in rest if "token_expired" in line]
    assert len(errors) == 1, rest[-5:]
    assert "[DONE]" not in "".join(rest) and "event: done" not in rest


def test_a_websocket_closes_when_its_token_expires(
    fast_watch_gateway: GatewayServer, signers: dict[str, Signer], clock: Clock
) -> None:
    from websockets.exceptions import ConnectionClosed

    from tests.gateway.test_ws import _connect, _recv

    token = signers["rsa"].token(sub="tess", roles=["user"], exp=clock.now + 60)
    with fast_watch_gateway.client(token) as http:
        sid = http.post("/v1/sessions", json={"parameters": {"thinking": False}}).json()["id"]
    with _connect(fast_watch_gateway, sid, Authorization=f"Bearer {token}") as ws:
        clock.now += 60 + LEEWAY
        frame = _recv(ws, timeout=10)
        with pytest.raises(ConnectionClosed) as closed:
            _recv(ws, timeout=10)
    assert frame["error"]["code"] == "token_expired"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
