"""Client-side tool results in a fleet: a paused answer takes a result that arrived at
another instance (its mailbox is in Redis). The mailbox on its own first (two instances'
views racing over one answer, seeded), then two gateways over real sockets."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from dskit.gateway.backends._redis_log import RedisStreamLog
from dskit.gateway.backends._tool_results import Outcome, RedisToolResults
from tests.conftest import wait_until
from tests.gateway.conftest import RecordingUpstream
from tests.gateway.test_tool_pause import (
    SUNNY,
    control_frame,
    events_until,
    send,
    seqs,
    text_of,
    tool_session,
    turns,
)
from tests.gateway.test_tool_race import race_tool_results
from tests.gateway.test_ws import _connect, _logged, _recv
from tests.gateway_redis._fleet import start_fleet

pytestmark = pytest.mark.redis
SEED = int(os.environ.get("DSKIT_RACE_SEED", "20251207"))


def _mailbox(log: RedisStreamLog) -> RedisToolResults:
    return RedisToolResults(log.redis, log.settings.namespace, log.reader)


async def test_one_result_per_call_whoever_puts_it_and_the_owner_takes_them_all(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    """Seeded rounds: the calls' results, each put 1-3 times at once from both
    instances' views, while the owner waits. Exactly one put per call is accepted; the
    owner gets every result once; afterwards every put is refused as not waiting. (A
    busy machine found the race: the owner closed the mailbox before the last duplicate
    put ran, and the test had wanted `duplicate` from it.)"""
    owner, others = _mailbox(log), [_mailbox(log), _mailbox(other_log)]
    for index in range(12):
        rng = random.Random(f"{SEED}-{index}")
        where = f"seed {SEED} round {index}"
        answer_id, calls = uuid.uuid4().hex, [f"call_{n}" for n in range(rng.randint(1, 4))]
        await owner.open(answer_id, calls, 10)
        waiting = asyncio.ensure_future(owner.wait(answer_id, 10))
        puts = [(call, rng.choice(others)) for call in calls for _ in range(rng.randint(1, 3))]
        rng.shuffle(puts)
        done = await asyncio.gather(*(box.put(answer_id, c, f"r-{c}") for c, box in puts))
        accepted = sorted(
            c for (c, _), d in zip(puts, done, strict=True) if d.outcome is Outcome.ACCEPTED
        )
        assert accepted == sorted(calls), where
        # a second put of a call is a duplicate, or, once the owner has taken every
        # result and closed the mailbox (it may, while the last puts are on their way),
        # not waiting; never a second acceptance (above)
        again = {Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.NOT_WAITING}
        assert {d.outcome for d in done} <= again, where
        assert await asyncio.wait_for(waiting, 10) == {c: f"r-{c}" for c in calls}, where
        late = await others[1].put(answer_id, calls[0], "late")
        assert late.outcome is Outcome.NOT_WAITING, where
        assert not await log.redis.exists(*owner._keys(answer_id)), where  # nothing left


async def test_a_put_for_another_call_or_after_the_deadline_is_refused(
    log: RedisStreamLog, other_log: RedisStreamLog
) -> None:
    owner, other = _mailbox(log), _mailbox(other_log)
    answer_id = uuid.uuid4().hex
    await owner.open(answer_id, ["a", "b"], 0.3)
    waiting = asyncio.ensure_future(owner.wait(answer_id, 0.3))
    unknown = await other.put(answer_id, "c", "?")
    assert unknown.outcome is Outcome.UNKNOWN_CALL and unknown.pending == ("a", "b")
    taken = await other.put(answer_id, "b", "B")
    assert taken.outcome is Outcome.ACCEPTED and taken.pending == ("a",)
    assert await waiting is None  # "a" never came
    assert (await other.put(answer_id, "a", "A")).outcome is Outcome.NOT_WAITING
    assert (await other.put("no-such-answer", "a", "A")).outcome is Outcome.NOT_WAITING


def test_a_result_sent_to_another_instance_resumes_the_answer_there_and_resume_is_exact(
    gateway_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    """The answer runs on the first instance; its WebSocket drops at `tool_wait`. The
    result goes to the second (a WebSocket frame), the client resumes there after the
    last event it saw, and reads the rest of the same answer, exactly."""
    shared = {"redis": redis_url, "store": redis_url, "redis_namespace": redis_prefix}
    first, second = gateway_factory(**shared), gateway_factory(**shared)
    with first.client() as http:
        sid = tool_session(http)
    with _connect(first, sid) as ws:
        send(ws, type="message", content="What is the weather in Paris?")
        answer_id = _recv(ws)["answer_id"]
        seen, _ = events_until(ws, "tool_wait")  # then the connection drops
    call_id = seen[-1]["data"]["tool_calls"][0]["id"]
    with _connect(second, sid) as ws:
        send(ws, type="tool_result", tool_call_id="call_nope", content="?")
        assert control_frame(ws, [])["error"]["code"] == "unknown_tool_call"
        send(ws, type="tool_result", tool_call_id=call_id, content=SUNNY)
        assert control_frame(ws, [])["pending"] == []
        send(ws, type="tool_result", tool_call_id=call_id, content=SUNNY)
        assert control_frame(ws, [])["error"]["status"] == 409  # once only
        send(ws, type="resume", after=seen[-1]["id"])
        rest, _ = events_until(ws, "done", "error")
    events = seen + rest
    assert seqs(events, answer_id) == list(range(1, len(events) + 1))
    assert events == [
        {"id": e["id"], "event": e["type"], "data": e["data"]}
        for e in _logged(second, sid, answer_id)
    ]
    assert events[-1]["event"] == "done"
    assert text_of(rest).startswith(f"get_weather returned: {SUNNY}.")
    with second.client() as http:
        stored = turns(http, sid)
    assert [t["role"] for t in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[2]["content"] == SUNNY and stored[3]["content"] == text_of(rest)


def _tool_wait(http: Any, handle: dict[str, Any]) -> dict[str, Any]:
    """The answer's `tool_wait` event, long-polled for (on whichever instance `http` is)."""

    def paused() -> dict[str, Any] | None:
        page = http.get(handle["events_url"], params={"wait": 5}).json()
        waits = [e for e in page["events"] if e["type"] == "tool_wait"]
        return waits[-1] if waits else None

    found: dict[str, Any] = wait_until(paused, timeout=20)
    return found


def _result(http: Any, sid: str, answer_id: str) -> dict[str, Any]:
    """The answer's result once it ended (the route says 409 while it runs)."""
    url = f"/v1/sessions/{sid}/answers/{answer_id}"
    events = f"{url}/events"

    def ended() -> dict[str, Any] | None:
        http.get(events, params={"wait": 5, "after": 10**6})  # returns once it finishes
        reply = http.get(url)
        return reply.json() if reply.status_code == 200 else None

    found: dict[str, Any] = wait_until(ended, timeout=20)
    return found


def test_results_over_http_at_another_instance_and_a_timeout_in_a_fleet(
    gateway_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    shared = {"redis": redis_url, "store": redis_url, "redis_namespace": redis_prefix,
              "tool_result_timeout_seconds": 1.0}  # fmt: skip
    first, second = gateway_factory(**shared), gateway_factory(**shared)
    with first.client() as one, second.client() as two:
        for answered in (True, False):
            sid = tool_session(one)
            body = {"content": "What is the weather in Paris?", "background": True}
            handle = one.post(f"/v1/sessions/{sid}/messages", json=body).json()
            answer_id = handle["answer_id"]
            call_id = _tool_wait(two, handle)["data"]["tool_calls"][0]["id"]
            url = f"/v1/sessions/{sid}/answers/{answer_id}/tool_results"
            if answered:
                taken = two.post(url, json={"tool_call_id": call_id, "content": SUNNY})
                assert taken.status_code == 202, taken.text
            outcome = _result(two, sid, answer_id)
            kinds = [e["type"] for e in two.get(handle["events_url"]).json()["events"]]
            assert kinds.count("done") + kinds.count("error") == 1, kinds
            if answered:
                assert outcome["status"] == "completed", outcome
                assert outcome["message"]["content"].startswith("get_weather returned:")
                continue
            assert outcome["status"] == "failed" and outcome["error"]["code"] == "tool_timeout"
            late = two.post(url, json={"tool_call_id": call_id, "content": SUNNY})
            assert late.status_code == 409
            stored = turns(two, sid)
            assert [t["role"] for t in stored] == ["user", "assistant"]
            assert stored[1]["incomplete"] is True
            with redis.Redis.from_url(redis_url) as client:  # the mailbox is gone
                assert not client.keys(f"{redis_prefix}:answer:{{{answer_id}}}:*tool*")
                assert not client.keys(f"{redis_prefix}:answer:{{{answer_id}}}:results")


def test_racing_results_and_cancels_sent_to_another_instance(
    gateway_factory: Any, recording_upstream: RecordingUpstream, redis_url: str,
    redis_prefix: str,
) -> None:  # fmt: skip
    """test_tool_race's rounds in a fleet: the answers run on one instance, the results,
    strays and cancels go to the other."""
    shared = {"redis": redis_url, "store": redis_url, "redis_namespace": redis_prefix,
              "tool_result_timeout_seconds": 1.0, "upstream": recording_upstream.url}  # fmt: skip
    first, second = gateway_factory(**shared), gateway_factory(**shared)
    ended = race_tool_results(first, second, recording_upstream, SEED, rounds=10)
    assert "done" in ended, f"seed {SEED}: {ended}"


@pytest.mark.slow
def test_an_answer_whose_instance_died_while_it_waited_ends_with_tool_calls_lost(
    redis_url: str, redis_prefix: str, sim: Any, tmp_path: Path
) -> None:
    """SIGKILL of the instance running a paused answer: another instance takes the answer
    over and ends it with one clear error (before, it found the paused turn saved and
    ended the answer `done`, its message empty); the session stays usable."""
    fleet = start_fleet(2, redis_url, redis_prefix, sim.base_url, tmp_path)
    try:
        owner, other = fleet
        with httpx2.Client(base_url=owner.url, timeout=30) as one:
            sid = tool_session(one)
            body = {"content": "What is the weather in Paris?", "background": True}
            handle = one.post(f"/v1/sessions/{sid}/messages", json=body).json()
            _tool_wait(one, handle)
        owner.kill()
        with httpx2.Client(base_url=other.url, timeout=30) as two:
            outcome = _result(two, sid, handle["answer_id"])
            assert outcome["status"] == "failed", outcome
            assert outcome["error"]["code"] == "tool_calls_lost", outcome
            kinds = [e["type"] for e in two.get(handle["events_url"]).json()["events"]]
            assert kinds[-2:] == ["tool_wait", "error"], kinds
            stored = turns(two, sid)
            assert [t["role"] for t in stored] == ["user", "assistant"]
            assert stored[1]["incomplete"] and stored[1]["tool_calls"]
            again = two.post(f"/v1/sessions/{sid}/messages", json={"content": "Say hello."})
            assert again.status_code == 200 and again.json()["status"] == "completed"
    finally:
        for gateway in fleet:
            gateway.stop()
