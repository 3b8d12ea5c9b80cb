"""Tool results, duplicates, stray results and cancels racing a paused answer: however
they land (before the pause, while it waits, as it resumes), every answer ends once and
the session stays consistent.

Each round asks a question whose answer calls a client-side tool, then fires 0-4 actions
at once from their own threads and connections (the result, sometimes twice; a result
for a call nobody made; a cancel), either at once after the 202 (racing the pause's start)
or once `tool_wait` is logged. No action at all lets the short timeout end it. Then: one
terminal event, the last; the session free; at most one result taken, every other one
refused with a 4xx; the store holds the paused turn cut off (no tool turn) or whole with
its one tool turn; every request the upstream got is valid (a tool turn only after its
call, a call only with its result); and the next message is answered. `DSKIT_RACE_SEED`
replays a run; the seed and round are in every assertion message.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from typing import Any

import httpx2

from tests.conftest import wait_until
from tests.gateway.conftest import GatewayServer, RecordingUpstream
from tests.gateway.test_tool_pause import SUNNY, tool_session

SEED = int(os.environ.get("DSKIT_RACE_SEED", "20251207"))
ROUNDS = 16
TIMEOUT = 1.0


def valid_tool_order(messages: list[dict[str, Any]]) -> bool:
    """DeepSeek's rule: an assistant turn's tool calls are followed by one tool turn for
    each of them, and a tool turn only answers such a call."""
    waiting: set[str] = set()
    for message in messages:
        if message["role"] == "tool":
            if message.get("tool_call_id") not in waiting:
                return False
            waiting.discard(message["tool_call_id"])
            continue
        if waiting:
            return False
        waiting = {c["id"] for c in message.get("tool_calls") or ()}
    return not waiting


def _paused(http: httpx2.Client, handle: dict[str, Any]) -> dict[str, Any]:
    def logged() -> dict[str, Any] | None:
        page = http.get(handle["events_url"], params={"wait": 2}).json()
        found = [e for e in page["events"] if e["type"] in ("tool_wait", "done", "error")]
        return found[0] if found else None

    event: dict[str, Any] = wait_until(logged, timeout=20)
    return event


def _fire(
    gateway: GatewayServer, handle: dict[str, Any], call_id: str, actions: list[str]
) -> list[tuple[str, int]]:
    """The actions, from their own threads and connections, all at once: (action, status);
    a cancel that found nothing to stop is a `cancel-too-late`."""
    sid, aid = handle["session_id"], handle["answer_id"]
    url = f"/v1/sessions/{sid}/answers/{aid}/tool_results"
    go = threading.Barrier(len(actions))
    done: list[tuple[str, int]] = []

    def one(action: str) -> None:
        with gateway.client() as http:
            go.wait(timeout=10)
            if action == "cancel":
                reply = http.post(f"/v1/sessions/{sid}/cancel")
                action = "cancel" if reply.json()["cancelled"] else "cancel-too-late"
            else:
                call = call_id if action == "result" else "call_nobody_made"
                reply = http.post(url, json={"tool_call_id": call, "content": SUNNY})
            done.append((action, reply.status_code))

    threads = [threading.Thread(target=one, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(done) == len(actions), done
    return done


def _check_round(
    http: httpx2.Client, handle: dict[str, Any], replies: list[tuple[str, int]], where: str
) -> str:
    """The invariants of one ended round (see the module docstring); how it ended."""
    sid = handle["session_id"]
    active = lambda: http.get(f"/v1/sessions/{sid}").json()["active_answer"]  # noqa: E731
    wait_until(lambda: active() is None, timeout=15)
    page = http.get(handle["events_url"], params={"wait": 5}).json()
    events = page["events"]
    kinds = [e["type"] for e in events]
    assert page["finished"] and kinds.count("done") + kinds.count("error") == 1, where
    assert kinds[-1] in ("done", "error") and kinds.count("tool_wait") <= 1, f"{where}: {kinds}"
    taken = [s for a, s in replies if a == "result" and s == 202]
    assert len(taken) <= 1, f"{where}: {replies}"
    assert all(s in (200, 202, 400, 409) for _, s in replies), f"{where}: {replies}"
    assert all(s in (400, 409) for a, s in replies if a == "stray"), f"{where}: {replies}"
    turns = http.get(f"/v1/sessions/{sid}").json()["messages"]
    roles = [t["role"] for t in turns]
    answered = roles.count("tool")  # (a result taken just before a cancel is not stored)
    assert answered <= len(taken) and roles[:1] == ["user"], f"{where}: {roles} {replies}"
    if kinds.count("tool_wait") == 0:  # cancelled before it paused
        assert events[-1]["data"]["type"] == "cancelled" and not taken, f"{where}: {kinds}"
        assert any(a == "cancel" for a, _ in replies), f"{where}: {replies}"
        assert roles in (["user"], ["user", "assistant"]), f"{where}: {roles}"
        return "cancelled"
    paused = turns[1]
    assert paused["tool_calls"] and paused["incomplete"] is (not answered), f"{where}: {turns}"
    if kinds[-1] == "done":
        assert taken and roles == ["user", "assistant", "tool", "assistant"], f"{where}: {roles}"
        assert turns[3]["content"].startswith(f"get_weather returned: {SUNNY}."), where
        return "done"
    error = events[-1]["data"]
    if error["code"] == "tool_timeout":
        assert not taken and not any(a == "cancel" for a, _ in replies), f"{where}: {replies}"
    else:
        assert error["type"] == "cancelled", f"{where}: {error}"
        assert any(a == "cancel" for a, _ in replies), f"{where}: {replies}"
    return str(error["code"])


def _next_message_answered(http: httpx2.Client, sid: str, where: str) -> None:
    reply = http.post(f"/v1/sessions/{sid}/messages", json={"content": "Say hello instead."})
    assert reply.status_code == 200 and reply.json()["status"] == "completed", f"{where}: {reply}"


def race_tool_results(
    owner: GatewayServer, others: GatewayServer, upstream: RecordingUpstream, seed: int,
    rounds: int = ROUNDS,
) -> dict[str, int]:  # fmt: skip
    """The rounds: answers asked of `owner`, the actions sent to `others` (the same
    gateway, or another instance of its fleet); returns how the answers ended."""
    ended: dict[str, int] = {}
    with owner.client() as http:
        for index in range(rounds):
            rng = random.Random(f"{seed}-{index}")
            where = f"seed {seed} round {index}"
            sid = tool_session(http)
            slow = {"X-Sim-TTFT-Ms": str(rng.choice([0, 20, 100]))}
            body = {"content": "What is the weather in Paris?", "background": True}
            handle = http.post(f"/v1/sessions/{sid}/messages", json=body, headers=slow).json()
            actions = rng.sample(["result", "result", "stray", "cancel"], k=rng.randint(0, 4))
            replies = []
            if rng.random() < 0.3:  # at once after the 202, racing the pause's start
                first = [a for a in actions if a != "result"]  # (no call id is known yet)
                replies += _fire(others, handle, "", first) if first else []
                actions = [a for a in actions if a == "result"]
            event = _paused(http, handle)  # `tool_wait`, or the end when a cancel came first
            if actions and event["type"] == "tool_wait":
                replies += _fire(others, handle, event["data"]["tool_calls"][0]["id"], actions)
            how = _check_round(http, handle, replies, where)
            ended[how] = ended.get(how, 0) + 1
            _next_message_answered(http, sid, where)
    bad = [b["messages"] for b in upstream.bodies if not valid_tool_order(b["messages"])]
    assert not bad, f"seed {seed}: invalid requests went upstream: {bad[:1]}"
    return ended


def test_racing_results_and_cancels_end_every_paused_answer_once(
    gateway_factory: Callable[..., GatewayServer], recording_upstream: RecordingUpstream
) -> None:
    gateway = gateway_factory(upstream=recording_upstream.url, tool_result_timeout_seconds=TIMEOUT)
    ended = race_tool_results(gateway, gateway, recording_upstream, SEED)
    assert set(ended) >= {"done", "cancelled", "tool_timeout"}, f"seed {SEED}: {ended}"
