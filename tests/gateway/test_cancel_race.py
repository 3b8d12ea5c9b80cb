"""Cancels racing answers: however many arrive, whenever, every answer ends exactly once.

Each round starts a background answer and fires 1-4 cancels at once (`POST .../cancel`
and `DELETE .../answers/{id}` mixed) at a random moment: right after the 202, or once
some events are logged. Then, by deadline polls: the session's `active_answer` clears,
the log holds exactly one terminal event (done or error) and it is the last, the history
holds at most one assistant turn for the question (exactly one once text was logged,
marked incomplete when cut), and the next message is accepted. `DSKIT_RACE_SEED`
replays a run; the seed and round are in every assertion message.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from typing import Any

import httpx2

from dskit.gateway.answers._runner import upstream_messages
from dskit.store import StoredMessage
from tests.gateway._race import SEED, check_ended_once, new_session, on_loop
from tests.gateway.conftest import GatewayServer

ROUNDS = 30


def _cancel_at(
    http: httpx2.Client, handle: dict[str, Any], after: int | None, how: str, go: threading.Barrier
) -> None:
    """One cancel: once `after` events are logged (None: at once), all together."""
    if after is not None:
        http.get(handle["events_url"], params={"after": after, "wait": 5})
    go.wait(timeout=10)
    sid, aid = handle["session_id"], handle["answer_id"]
    if how == "session":
        reply = http.post(f"/v1/sessions/{sid}/cancel")
    else:
        reply = http.delete(f"/v1/sessions/{sid}/answers/{aid}")
    assert reply.status_code == 200, reply.text


def _fire(gateway: GatewayServer, handle: dict[str, Any], rng: random.Random) -> int:
    """1-4 cancels from their own threads (and connections), fired at once."""
    count = rng.randint(1, 4)
    after = None if rng.random() < 0.4 else rng.randint(0, 30)
    go = threading.Barrier(count)
    errors: list[BaseException] = []

    def one(how: str) -> None:
        try:
            with gateway.client() as http:
                _cancel_at(http, handle, after, how, go)
        except BaseException as exc:  # reported by the round
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(rng.choice(["session", "answer"]),))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return count


def race_cancels(
    gateway: GatewayServer, seed: int, rounds: int = ROUNDS,
    also: Callable[[dict[str, Any], str], None] | None = None,
) -> dict[str, int]:  # fmt: skip
    """The rounds against one gateway (`also`: more checks of each ended answer); returns
    how the answers ended."""
    ended = {"cancels": 0, "done": 0, "error": 0}
    with gateway.client() as http:
        for index in range(rounds):
            rng = random.Random(f"{seed}-{index}")
            where = f"seed {seed} round {index}"
            slow = {"X-Sim-Token-Ms": str(rng.choice([1, 2, 4])),
                    "X-Sim-TTFT-Ms": str(rng.choice([0, 0, 20, 150]))}  # fmt: skip
            sid = new_session(http)
            posted = http.post(
                f"/v1/sessions/{sid}/messages", headers=slow,
                json={"content": "Tell me a long story about rivers", "background": True},
            )  # fmt: skip
            assert posted.status_code == 202, f"{where}: {posted.text}"
            handle = posted.json()
            ended["cancels"] += _fire(gateway, handle, rng)
            check_ended_once(http, handle, where)
            if also is not None:
                also(handle, where)
            last = http.get(handle["events_url"]).json()["events"][-1]["type"]
            ended[last] += 1
    return ended


def test_racing_cancels_end_every_answer_once(gateway: GatewayServer) -> None:
    ended = race_cancels(gateway, SEED)
    assert ended["error"] > 0, f"seed {SEED}: no round was cancelled: {ended}"


def _start_and_cancel_at_once(
    gateway: GatewayServer, sid: str, cancels: int
) -> tuple[str, list[bool]]:
    """On the gateway's loop: start an answer and cancel it before its task first runs."""

    gw = gateway.gw

    async def go() -> tuple[str, list[bool]]:
        record = await gw.store.aload(sid)
        user = StoredMessage({"role": "user", "content": "never answered"})
        record.messages.append(user)
        record.version = await gw.store.aappend(sid, [user], expected_version=record.version)
        messages = upstream_messages(record, None)
        answer_id = await gw.runner.start(record, messages, {}, None, "local")
        # no await yields to the loop before the first cancel: the answer's task has not
        # run yet; the others are queued behind it
        others = [asyncio.ensure_future(gw.runner.cancel(answer_id)) for _ in range(cancels - 1)]
        first = await gw.runner.cancel(answer_id)
        return answer_id, [first, *await asyncio.gather(*others)]

    return on_loop(gateway, go)


def test_a_cancel_before_the_task_starts_still_ends_the_answer(gateway: GatewayServer) -> None:
    with gateway.client() as http:
        for cancels in (1, 3):
            sid = new_session(http)
            answer_id, results = _start_and_cancel_at_once(gateway, sid, cancels)
            assert results == [True] * cancels
            base = f"/v1/sessions/{sid}/answers/{answer_id}"
            handle = {"session_id": sid, "answer_id": answer_id, "events_url": f"{base}/events"}
            check_ended_once(http, handle, f"{cancels} cancels before the start")
            events = http.get(handle["events_url"]).json()["events"]
            assert [e["data"]["type"] for e in events] == ["cancelled"]
