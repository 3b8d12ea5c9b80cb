"""What the race tests share: the seed, the end-of-answer checks, the gateway's loop.

`DSKIT_RACE_SEED` replays a run of any race test; every assertion message names the seed
and the round (`where`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import httpx2

from tests.conftest import wait_until
from tests.gateway.conftest import GatewayServer

SEED = int(os.environ.get("DSKIT_RACE_SEED", "20251203"))
TERMINAL = ("done", "error")


def new_session(http: httpx2.Client) -> str:
    body = {"model": "deepseek-flash", "parameters": {"thinking": False}}
    sid: str = http.post("/v1/sessions", json=body).json()["id"]
    return sid


def until(predicate: Callable[[], Any], where: str, what: str, timeout: float = 10) -> None:
    """`wait_until`, failing with `where` (seed and round) and what did not happen."""
    try:
        wait_until(predicate, timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"{where}: {what} within {timeout:g} s") from None


def check_ended(http: httpx2.Client, handle: dict[str, Any], where: str) -> list[str]:
    """The answer ended for good: the session free, one terminal event and it is the last,
    at most one saved turn (one when text was logged or it ended well, incomplete when
    cut). Returns the kinds of its events."""
    sid = handle["session_id"]
    active = lambda: http.get(f"/v1/sessions/{sid}").json()["active_answer"]  # noqa: E731
    until(lambda: active() is None, where, "active_answer did not clear")
    page = http.get(handle["events_url"], params={"wait": 5}).json()
    kinds = [e["type"] for e in page["events"]]
    ends = [k for k in kinds if k in TERMINAL]
    assert page["finished"], f"{where}: the answer never finished: {kinds[-3:]}"
    assert len(ends) == 1 and kinds[-1] in TERMINAL, f"{where}: terminal events {ends}"
    turns = http.get(f"/v1/sessions/{sid}").json()["messages"]
    assert turns[0]["role"] == "user", where
    replies = [t for t in turns[1:] if t["role"] == "assistant"]
    texted = any(k in ("content", "reasoning") for k in kinds)
    assert len(replies) == (1 if texted or kinds[-1] == "done" else 0), f"{where}: {turns}"
    if replies:
        assert replies[0]["incomplete"] is (kinds[-1] != "done"), f"{where}: {replies}"
    return kinds


def check_next_accepted(http: httpx2.Client, sid: str, where: str) -> None:
    """The session takes the next message (no answer still counts as running), and that
    answer ends on a cancel."""
    again = http.post(f"/v1/sessions/{sid}/messages", json={"content": "next", "background": True})
    assert again.status_code == 202, f"{where}: the next message got {again.status_code}"
    next_handle = again.json()
    http.post(f"/v1/sessions/{sid}/cancel")
    finished = lambda: http.get(next_handle["events_url"]).json()["finished"]  # noqa: E731
    until(finished, where, "the next answer did not end after its cancel")


def check_ended_once(http: httpx2.Client, handle: dict[str, Any], where: str) -> None:
    """`check_ended`, then the next message is accepted."""
    check_ended(http, handle, where)
    check_next_accepted(http, handle["session_id"], where)


def on_loop(gateway: GatewayServer, make: Callable[[], Any]) -> Any:
    """Run a coroutine on the gateway's own event loop (in its server thread)."""
    loop = gateway.server.servers[0].get_loop()
    return asyncio.run_coroutine_threadsafe(make(), loop).result(15)
