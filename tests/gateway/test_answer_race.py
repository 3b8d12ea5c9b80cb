"""Answers that hold: cancels, disconnects, upstream faults and shutdowns at random moments.

Over real HTTP, against three backends (the memory store and log, a SQLite store, and
Redis for log, leases and store, as `--redis` sets them up). Each seeded round asks 1-3
questions, each in its own session, each by one of the three ways a client asks (a
background 202, a streamed POST, a blocking POST) with pacing and maybe an upstream fault
(`X-Sim-*`: an error before the first token, once or for good; a stream dropped mid-answer,
resumed or for good). Then, at random moments (once some events are logged): 0-3 cancels
per answer, the client going away (the SSE stream closed, the blocking POST's connection
dropped), and in some rounds the gateway shut down with answers in flight and another
instance started on the same store (with Redis it takes the answers over: a second
instance started before the shutdown, or the restarted one).

Then, by deadline polls, for every answer: its session's `active_answer` cleared, exactly
one terminal event (`done` or `error`) and it is the last, no lease left (read from Redis
itself, or asked of the memory log), the session holds the question once and the answer
at most once (marked incomplete when cut), what the client saw agrees with the log, and
the next message is accepted. `DSKIT_RACE_SEED` replays a run; the seed, the backend and
the round are in every assertion message.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import select
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from dskit.gateway import GatewaySettings
from dskit.gateway.upstreams._breaker import BreakerSettings
from dskit.store import MemoryStore, SessionStore
from tests.conftest import wait_until
from tests.gateway._race import (
    SEED,
    TERMINAL,
    check_ended,
    check_next_accepted,
    new_session,
    on_loop,
    until,
)
from tests.gateway.conftest import GatewayServer

ROUNDS = {"memory": 20, "sqlite": 20, "redis": 20}
QUESTION = "Tell me a long story about rivers"
# what a dying connection looks like to a client while its gateway shuts down
GONE = (httpx2.TransportError, OSError, HTTPException)


# ---- the backends ------------------------------------------------------------------------


class Backend:
    """Gateway instances on one backend: `start()` another one on the same store."""

    name = ""

    def __init__(self, sim: Any, tmp: Path) -> None:
        self.sim, self.tmp = sim, tmp
        self.started: list[GatewayServer] = []

    def settings(self) -> dict[str, Any]:
        return {}

    def parts(self) -> dict[str, Any]:
        return {}

    def start(self) -> GatewayServer:
        values: dict[str, Any] = {
            "upstream": self.sim.base_url, "api_key": "sk-test-upstream-0123456789",
            "keys_path": str(self.tmp / "gateway.sqlite3"), "heartbeat_seconds": 0.5,
            "forward_sim_headers": True, "upstream_max_retries": 2, "upstream_max_resumes": 1,
            # one round's failing upstream must not open the breaker for the next rounds
            "breaker": BreakerSettings(failure_threshold=1_000_000),
            **self.settings(),
        }  # fmt: skip
        server = GatewayServer(GatewaySettings(**values), **self.parts()).start()
        self.started.append(server)
        return server

    def released(self, server: GatewayServer, answer_id: str, session_id: str) -> bool:
        """No lease outlives the answer: asked of the memory log through its protocol (a
        lease another worker can take is a free one)."""
        probe = server.gw.log.lease(answer_id, "race-probe", 0.01)
        if server.server.started and not server.server.should_exit:
            return bool(on_loop(server, lambda: probe))
        return bool(asyncio.run(probe))  # a stopped instance: its log is read as it was left

    def close(self) -> None:
        for server in self.started:
            server.stop()


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, sim: Any, tmp: Path) -> None:
        super().__init__(sim, tmp)
        self.store: SessionStore = MemoryStore()  # what a restart finds: the same sessions

    def parts(self) -> dict[str, Any]:
        return {"store": self.store}


class SQLiteBackend(Backend):
    name = "sqlite"

    def settings(self) -> dict[str, Any]:
        return {"store": str(self.tmp / "sessions.sqlite3")}


class RedisBackend(Backend):
    """Log, leases, rate limits, keys and sessions in Redis; short leases, quick scans."""

    name = "redis"

    def __init__(self, sim: Any, tmp: Path, url: str, namespace: str) -> None:
        import redis

        super().__init__(sim, tmp)
        self.url, self.namespace = url, namespace
        self.direct = redis.Redis.from_url(url)

    def settings(self) -> dict[str, Any]:
        return {"redis": self.url, "store": self.url, "redis_namespace": self.namespace,
                "lease_seconds": 1.0, "takeover_interval": 0.1}  # fmt: skip

    def released(self, server: GatewayServer, answer_id: str, session_id: str) -> bool:
        """The answer's keys as `_redis_log.py` names them: no lease, no active mark, not
        in the running set, finished; and no live instance still renewing a lease."""
        ns, direct = self.namespace, self.direct
        base = f"{ns}:answer:{{{answer_id}}}"
        renewing = any(s.gw.log.holds(answer_id) for s in self.started if not s.server.should_exit)
        return (
            not renewing
            and not direct.exists(f"{base}:lease", f"{ns}:active:{{{session_id}}}")
            and direct.zscore(f"{ns}:running", answer_id) is None
            and direct.hget(f"{base}:meta", "finished") == b"1"
        )

    def close(self) -> None:
        super().close()
        self.direct.close()


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)],
)
def backend(request: pytest.FixtureRequest, sim: Any, tmp_path: Path) -> Iterator[Backend]:
    made: Backend
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        made = RedisBackend(sim, tmp_path, url, request.getfixturevalue("redis_prefix") + "ar")
    else:
        made = {"memory": MemoryBackend, "sqlite": SQLiteBackend}[request.param](sim, tmp_path)
    yield made
    made.close()


# ---- one round's plan ----------------------------------------------------------------------


def _fault(rng: random.Random) -> tuple[str, dict[str, str]]:
    """An upstream fault (X-Sim-* headers), or none."""
    key = {"X-Sim-Fault-Key": uuid.uuid4().hex}  # counts this answer's requests only
    once, always = {**key, "X-Sim-Fault-Times": "1"}, {**key, "X-Sim-Fault-Times": "100"}
    drop = {"X-Sim-Drop-After-Events": str(rng.randint(1, 30))}
    faults: dict[str, dict[str, str]] = {
        "none": {},
        "429-once": {**once, "X-Sim-Status": "429", "X-Sim-Retry-After-Ms": "5"},
        "503": {**always, "X-Sim-Status": "503", "X-Sim-Retry-After-Ms": "5"},
        "500": {**always, "X-Sim-Status": "500", "X-Sim-Retry-After-Ms": "5"},
        "drop-once": {**once, **drop},
        "drop": {**always, **drop},
    }
    name = rng.choice(["none", "none", "none", *faults])
    return name, faults[name]


def _moment(rng: random.Random) -> int | None:
    """When something happens: at once (None) or once this many events are logged."""
    return None if rng.random() < 0.3 else rng.randint(0, 40)


@dataclass
class Ask:
    """One answer of a round: how it is asked, what befalls it, what the client saw."""

    index: int
    mode: str  # background, sse or blocking
    fault: str
    headers: dict[str, str]
    cancels: list[tuple[int | None, str]]  # each cancel's moment and route
    leave: int  # the client goes away once this many events are logged (-1: never)
    sid: str = ""
    question: str = ""
    server: GatewayServer | None = None  # the instance it was asked of
    answer_id: str | None = None
    seen: list[str] = field(default_factory=list)  # the event kinds the SSE client read
    status: int | None = None  # the blocking POST's answer (None: its connection went)
    result: str | None = None  # and the status its body tells (completed, cancelled)
    problems: list[str] = field(default_factory=list)
    over: threading.Event = field(default_factory=threading.Event)  # the client is done

    @classmethod
    def draw(cls, rng: random.Random, index: int, slow: bool) -> Ask:
        pace = rng.choice([5, 10]) if slow else rng.choice([1, 2, 4])
        fault, headers = _fault(rng)
        headers = {"X-Sim-Token-Ms": str(pace),
                   "X-Sim-TTFT-Ms": str(rng.choice([0, 20, 100])), **headers}  # fmt: skip
        mode = rng.choice(["background", "sse", "blocking"])
        cancels = [(_moment(rng), rng.choice(["session", "answer"]))
                   for _ in range(rng.choice([0, 0, 1, 2, 3]))]  # fmt: skip
        leave = -1 if mode == "background" or rng.random() < 0.4 else rng.randint(0, 40)
        return cls(index, mode, fault, headers, cancels, leave)

    @property
    def events_url(self) -> str:
        return f"/v1/sessions/{self.sid}/answers/{self.answer_id}/events"

    def handle(self) -> dict[str, Any]:
        return {"session_id": self.sid, "answer_id": self.answer_id,
                "events_url": self.events_url}  # fmt: skip


@dataclass
class Round:
    where: str
    asks: list[Ask]
    shutdown: int | None  # which answer's progress the shutdown waits for (None: none)
    shutdown_at: int  # once it logged this many events
    takeover: str  # redis: "other" (a second instance runs) or "restart"

    @classmethod
    def draw(cls, seed: int, backend: str, index: int) -> Round:
        rng = random.Random(f"{seed}-{backend}-{index}")
        shutdown = rng.random() < 0.25 or index == 1  # every run has some
        asks = [Ask.draw(rng, i, shutdown) for i in range(rng.randint(1, 3))]
        return cls(
            f"seed {seed} {backend} round {index}", asks,
            rng.randrange(len(asks)) if shutdown else None, rng.randint(0, 30),
            rng.choice(["other", "restart"]),
        )  # fmt: skip


# ---- the client side -------------------------------------------------------------------------


def _wait_events(http: httpx2.Client, ask: Ask, after: int | None) -> None:
    """Until `after` events are logged (or the answer ended); None: at once."""
    if after is not None and ask.answer_id is not None:
        http.get(ask.events_url, params={"after": after, "wait": 5})


def _cancel(url: str, ask: Ask, after: int | None, route: str, tolerant: bool) -> None:
    with httpx2.Client(base_url=url, timeout=15) as http:
        try:
            _wait_events(http, ask, after)
            path = f"/v1/sessions/{ask.sid}"
            if route == "session":
                reply = http.post(f"{path}/cancel")
            else:
                reply = http.delete(f"{path}/answers/{ask.answer_id}")
            if reply.status_code != 200 and not tolerant:
                ask.problems.append(f"a cancel got {reply.status_code}: {reply.text}")
        except GONE as exc:
            if not tolerant:
                ask.problems.append(f"a cancel failed: {exc!r}")


def _post(ask: Ask) -> dict[str, Any]:
    flag = {"background": "background", "sse": "stream"}[ask.mode]
    body = {"content": ask.question, flag: True}
    return {"url": f"/v1/sessions/{ask.sid}/messages", "json": body, "headers": ask.headers}


def _background(http: httpx2.Client, ask: Ask) -> None:
    reply = http.post(**_post(ask))
    assert reply.status_code == 202, reply.text
    ask.answer_id = reply.json()["answer_id"]


def _sse(http: httpx2.Client, ask: Ask, started: Callable[[], None]) -> None:
    """The streamed POST, read until its end or until the client leaves."""
    with http.stream("POST", **_post(ask)) as response:
        assert response.status_code == 200, response.read()
        ask.answer_id = response.headers["x-answer-id"]
        started()
        events = 0
        for line in response.iter_lines():
            if line.startswith("event: "):
                ask.seen.append(line.removeprefix("event: "))
            elif line.startswith("data: "):
                events += 1
                if events > ask.leave >= 0:
                    return  # the client goes away: its connection closes here


def _blocking(http: httpx2.Client, ask: Ask, url: str, started: Callable[[], None]) -> None:
    """The blocking POST on a connection of its own; the answer's id is learnt from its
    session while it runs, so the client can drop the connection mid-answer."""
    host, _, port = url.removeprefix("http://").partition(":")
    conn = HTTPConnection(host, int(port), timeout=30)
    body = orjson.dumps({"content": ask.question})
    conn.request("POST", f"/v1/sessions/{ask.sid}/messages", body,
                 {"Content-Type": "application/json", **ask.headers})  # fmt: skip
    assert conn.sock is not None
    try:
        answered = lambda: select.select([conn.sock], [], [], 0)[0]  # noqa: E731
        active = lambda: http.get(f"/v1/sessions/{ask.sid}").json()["active_answer"]  # noqa: E731
        running = wait_until(lambda: (answered() and "replied") or active(), timeout=20)
        if running != "replied":
            ask.answer_id = running
            started()
            if ask.leave >= 0:
                _wait_events(http, ask, ask.leave)
                return  # the client goes away: the connection closes unanswered
        reply = conn.getresponse()
        raw = reply.read()
        if reply.getheader("content-type") != "application/json":  # not the gateway's
            # uvicorn's own 500, once a shutdown's grace period ran out: a cut connection
            raise HTTPException(f"{reply.status} {raw[:60]!r}")
        data = orjson.loads(raw)
        ask.status, ask.result = reply.status, data.get("status")
        ask.answer_id = ask.answer_id or data.get("answer_id")
    finally:
        conn.close()


def _client(ask: Ask, url: str, tolerant: bool) -> None:
    """One answer asked, its cancels fired at their moments, the client's own end."""
    cancels: list[threading.Thread] = []

    def started() -> None:
        for after, route in ask.cancels:
            cancel = threading.Thread(target=_cancel, args=(url, ask, after, route, tolerant))
            cancel.start()
            cancels.append(cancel)

    try:
        with httpx2.Client(base_url=url, timeout=30) as http:
            if ask.mode == "background":
                _background(http, ask)
                started()
            elif ask.mode == "sse":
                _sse(http, ask, started)
            else:
                _blocking(http, ask, url, started)
    except GONE as exc:
        if not tolerant:
            ask.problems.append(f"the client failed: {exc!r}")
    except (AssertionError, TimeoutError) as exc:
        ask.problems.append(f"the client failed: {exc!r}")
    finally:
        for cancel in cancels:
            cancel.join(30)
        ask.over.set()


# ---- a round -------------------------------------------------------------------------------


def _shut_down(backend: Backend, current: GatewayServer, plan: Round) -> GatewayServer:
    """Stop `current` with answers in flight; the instance that goes on (on the same
    store): a second one started before (Redis, `other`), or a restarted one."""
    assert plan.shutdown is not None
    ask = plan.asks[plan.shutdown]
    other = backend.start() if backend.name == "redis" and plan.takeover == "other" else None
    with httpx2.Client(base_url=current.url, timeout=15) as http:
        until(lambda: ask.answer_id or ask.over.is_set(), plan.where, "no answer started")
        with contextlib.suppress(*GONE):  # it ended, its gateway stops: all the same
            _wait_events(http, ask, plan.shutdown_at)
    current.stop()
    return other or backend.start()


def _play(backend: Backend, current: GatewayServer, plan: Round) -> GatewayServer:
    """Ask every question at once, shut down when planned; the instance that is left."""
    tolerant = plan.shutdown is not None
    with current.client() as http:
        for ask in plan.asks:
            ask.sid, ask.server = new_session(http), current
            ask.question = f"{QUESTION} ({plan.where}, answer {ask.index})"
    clients = [
        threading.Thread(target=_client, args=(ask, current.url, tolerant)) for ask in plan.asks
    ]
    for thread in clients:
        thread.start()
    if plan.shutdown is not None:
        current = _shut_down(backend, current, plan)
    for thread in clients:
        thread.join(60)
        assert not thread.is_alive(), f"{plan.where}: a client hangs"
    return current


def _check(backend: Backend, http: httpx2.Client, ask: Ask, where: str) -> str:
    """Every invariant of one answer, once the round is over; how it ended."""
    where = f"{where} answer {ask.index} ({ask.mode}, fault {ask.fault})"
    assert not ask.problems, f"{where}: {ask.problems}"
    ask.answer_id = ask.answer_id or _saved_id(http, ask)
    if ask.answer_id is None:  # refused by a stopping gateway, or failed before it was seen
        return _check_unseen(http, ask, where)
    assert ask.server is not None
    moved = ask.server.server.should_exit and backend.name != "redis"
    old = _old_log(ask) if moved else None  # the stopped instance's log, as it was left
    if old is not None:
        assert old.count("error") + old.count("done") == 1 and old[-1] in TERMINAL, (
            f"{where}: the stopped instance logged {old[-4:]}"
        )
    reply = http.get(ask.events_url)
    if old is not None and reply.status_code == 404:  # nothing saved: only its old log knows
        assert not {"content", "reasoning"} & set(old), f"{where}: text logged, none saved"
        kinds = old
    else:
        kinds = check_ended(http, ask.handle(), where)
        assert old is None or old[-1] == kinds[-1], f"{where}: {old[-1:]} then {kinds[-1:]}"
    server, answer_id = ask.server, ask.answer_id
    until(lambda: backend.released(server, answer_id, ask.sid), where,
          "the answer's lease (or running mark) was not released")  # fmt: skip
    _check_stored(http, ask, where)
    _check_client_view(ask, kinds, where)
    check_next_accepted(http, ask.sid, where)
    return kinds[-1]


def _saved_id(http: httpx2.Client, ask: Ask) -> str | None:
    """The id of the answer the session saved (a blocking POST that failed before its
    client saw the answer run, having logged some text)."""
    turns = http.get(f"/v1/sessions/{ask.sid}").json()["messages"]
    found: str | None = turns[-1]["answer_id"] if turns[-1:] and len(turns) == 2 else None
    return found


def _old_log(ask: Ask) -> list[str]:
    assert ask.server is not None and ask.answer_id is not None
    page = asyncio.run(ask.server.gw.log.read(ask.answer_id, 0))
    assert page.finished, f"the stopped instance left answer {ask.answer_id} unfinished"
    return [entry.kind for entry in page.entries]


def _check_stored(http: httpx2.Client, ask: Ask, where: str) -> None:
    """The session holds the question once and the answer at most once, nothing else."""
    turns = http.get(f"/v1/sessions/{ask.sid}").json()["messages"]
    roles = [t["role"] for t in turns]
    assert roles in (["user"], ["user", "assistant"]), f"{where}: stored {roles}"
    assert turns[0]["content"] == ask.question, f"{where}: {turns[0]}"
    if len(turns) == 2:
        assert turns[1]["answer_id"] == ask.answer_id, f"{where}: {turns[1]}"


def _check_client_view(ask: Ask, kinds: list[str], where: str) -> None:
    """What the client read agrees with the log: the SSE client saw at most one terminal
    event, last; the blocking POST's answer tells how the answer ended."""
    ends = [k for k in ask.seen if k in TERMINAL]
    assert len(ends) <= 1 and (not ends or ask.seen[-1] == ends[0] == kinds[-1]), (
        f"{where}: the stream showed {ask.seen[-4:]}, the log ends {kinds[-1]}"
    )
    if ask.status is not None:  # 200 for an answer that ended (completed or cancelled)
        told = (ask.status, ask.result)
        assert (told == (200, "completed")) is (kinds[-1] == "done"), f"{where}: {told} {kinds}"


def _check_unseen(http: httpx2.Client, ask: Ask, where: str) -> str:
    """An answer whose id the client never learnt (a blocking POST that failed at once,
    or any request a stopping gateway refused): the session is free and holds the
    question at most once, and no answer."""
    assert ask.status is None or ask.status >= 400, f"{where}: got {ask.status}, no answer id"
    detail = http.get(f"/v1/sessions/{ask.sid}").json()
    assert detail["active_answer"] is None, f"{where}: {detail['active_answer']} still active"
    roles = [t["role"] for t in detail["messages"]]
    assert roles in ([], ["user"]), f"{where}: stored {roles}"
    if roles:
        check_next_accepted(http, ask.sid, where)
    return "unseen"


def test_answers_hold_through_cancels_disconnects_faults_and_shutdowns(
    backend: Backend,
) -> None:
    current = backend.start()
    ended: dict[str, int] = {"done": 0, "error": 0, "unseen": 0, "shutdowns": 0}
    for index in range(ROUNDS[backend.name]):
        plan = Round.draw(SEED, backend.name, index)
        current = _play(backend, current, plan)
        ended["shutdowns"] += plan.shutdown is not None
        with current.client() as http:
            for ask in plan.asks:
                ended[_check(backend, http, ask, plan.where)] += 1
    where = f"seed {SEED} {backend.name}"
    assert ended["done"] and ended["error"] and ended["shutdowns"], f"{where}: {ended}"
