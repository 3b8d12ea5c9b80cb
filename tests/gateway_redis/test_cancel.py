"""Cancelling answers logged in Redis: the generation stops every time."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest

from tests.conftest import wait_until
from tests.gateway._race import SEED
from tests.gateway.test_cancel_race import race_cancels

pytestmark = pytest.mark.redis


def test_a_cancel_always_stops_the_generation(
    gateway_factory: Any, sim_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    """redis-py can swallow a cancellation that lands at the end of a command; one landing
    in an append let the generation run on to the end of the answer. Cancelled at random
    points of fast-paced answers (an append every few ms), every one stops at once."""
    sim = sim_factory(token_ms=3)
    gateway = gateway_factory(upstream=sim.base_url, redis=redis_url, redis_namespace=redis_prefix)
    rng = random.Random(5)
    with gateway.client() as http:
        for _ in range(40):
            sid = http.post(
                "/v1/sessions", json={"model": "deepseek-flash", "parameters": {"thinking": False}}
            ).json()["id"]
            handle = http.post(
                f"/v1/sessions/{sid}/messages",
                json={"content": "Tell me a long story about rivers", "background": True},
            ).json()
            point = rng.randint(0, 40)  # cancel once this many events are logged
            page = http.get(handle["events_url"], params={"after": point, "wait": 10}).json()
            assert page["events"], "the answer is still streaming at that point"
            began = time.monotonic()
            cancel = http.post(f"/v1/sessions/{sid}/cancel").json()
            assert time.monotonic() - began < 1.0, "a cancel returns when the generation stopped"
            result = http.get(f"/v1/sessions/{sid}/answers/{handle['answer_id']}").json()
            assert result["status"] == ("cancelled" if cancel["cancelled"] else "completed")


def test_racing_cancels_end_every_answer_once_and_release_its_lease(
    gateway_factory: Any, redis_url: str, redis_prefix: str
) -> None:
    """The race of tests/gateway/test_cancel_race.py on the Redis log: besides ending
    once, no answer keeps its lease (no renewer left running, no lease key in Redis)."""
    import redis

    gateway = gateway_factory(redis=redis_url, redis_namespace=redis_prefix)
    log = gateway.gw.log
    direct = redis.Redis.from_url(redis_url)

    def released(handle: dict[str, Any], where: str) -> None:
        answer_id = handle["answer_id"]
        lease = f"{redis_prefix}:answer:{{{answer_id}}}:lease"
        wait_until(lambda: not log.holds(answer_id) and not direct.exists(lease), timeout=10)
        assert not log.holds(answer_id), f"{where}: the lease is still held"

    try:
        ended = race_cancels(gateway, SEED, also=released)
    finally:
        direct.close()
    assert ended["error"] > 0, f"seed {SEED}: no round was cancelled: {ended}"


def test_a_cancel_just_before_shutdown_ends_the_answer_and_hands_nothing_over(
    gateway_factory: Any, sim: Any, redis_url: str, redis_prefix: str
) -> None:
    """Shutdown hands running answers over to another instance; one a caller has just
    cancelled must end cancelled here instead (it was handed over and went on)."""
    import asyncio

    from dskit.gateway.answers._runner import upstream_messages
    from dskit.store import StoredMessage
    from tests.gateway._race import on_loop

    gateway = gateway_factory(redis=redis_url, redis_namespace=redis_prefix + "sd")
    gw = gateway.gw
    with gateway.client() as http:
        sid = http.post("/v1/sessions", json={"parameters": {"thinking": False}}).json()["id"]

    async def go() -> list[Any]:
        record = await gw.store.aload(sid)
        user = StoredMessage({"role": "user", "content": "a long one"})
        record.messages.append(user)
        record.version = await gw.store.aappend(sid, [user], expected_version=record.version)
        headers = {"x-sim-token-ms": "50"}
        answer_id = await gw.runner.start(record, upstream_messages(record, None), headers,
                                          None, "local")  # fmt: skip
        cancelling = asyncio.ensure_future(gw.runner.cancel(answer_id))
        await asyncio.sleep(0)  # one turn of the loop: the cancel is asked, not ended
        await gw.runner.shutdown()
        await cancelling
        return list((await gw.log.read(answer_id, 0)).entries)

    entries = on_loop(gateway, go)
    assert entries and entries[-1].kind == "error", [e.kind for e in entries]
    assert orjson.loads(entries[-1].data)["type"] == "cancelled"
