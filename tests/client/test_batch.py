"""`client.batch`: order, per-line errors, AIMD concurrency, packing (verified or not).

Against the simulator over real HTTP, and for packs answered correctly a little local
server speaking DeepSeek's SSE wire format. The controller is also driven by a scripted,
seeded schedule, so its recorded limits are asserted exactly.
"""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import orjson
import pytest

from dskit import (
    AsyncDeepSeek,
    BatchResult,
    Concurrency,
    DeepSeek,
    LimitChange,
    RateLimitError,
)
from dskit._tokens import count_prompt
from dskit.client._batch import AIMD, BatchRun, Finished, Observed, Unit
from dskit.client._batch_pack import pack_messages, split_answers
from dskit.client._types import ChatResult, Retrying, Usage
from tests.conftest import LocalHTTPServer

from .conftest import FIXED_JITTER, faults_once

QUESTIONS = [f"question number {i}: is {i} even?" for i in range(12)]


# ---- against the simulator --------------------------------------------------------


def test_results_are_in_input_order_and_match_single_requests(client: DeepSeek) -> None:
    requests: list[Any] = [
        "plain string",
        {"id": "t-1", "question": "a ticket"},
        {
            "messages": [{"role": "user", "content": "messages form"}],
            "max_tokens": 5,
            "thinking": False,
        },
        *QUESTIONS,
    ]
    results = client.batch(requests, concurrency=Concurrency(start=2, maximum=6))
    assert [r.index for r in results] == list(range(len(requests)))
    assert all(r.ok and r.content and r.usage for r in results)
    assert results[1].id == "t-1" and results[0].id is None
    assert results[2].finish_reason == "length"
    assert results[0].content == client.chat("plain string").content
    assert results[5].content == client.chat(QUESTIONS[2]).content


def test_a_failed_line_has_its_error_and_does_not_stop_the_batch(client: DeepSeek) -> None:
    bad_request = {"X-Sim-Status": "400"}
    requests: list[Any] = [
        "fine",
        {"question": "too hot", "temperature": 5},  # refused before sending
        42,  # not a request at all
        {"question": "server says no", "extra_headers": bad_request},
        {"messages": "not a list"},
        "also fine",
    ]
    results = client.batch(requests, concurrency=3)
    assert [r.ok for r in results] == [True, False, False, False, False, True]
    errors = [r.error.type for r in results if r.error]
    assert errors == ["ValidationError", "ValidationError", "BadRequestError", "ValidationError"]
    assert "temperature" in (results[1].error.message if results[1].error else "")


def test_on_result_sees_every_result_once_as_it_finishes(client: DeepSeek) -> None:
    seen: list[BatchResult] = []
    results = client.batch(QUESTIONS, concurrency=4, on_result=seen.append)
    assert sorted(r.index for r in seen) == list(range(len(QUESTIONS)))
    assert {r.index: r for r in seen} == {r.index: r for r in results}


def test_a_429_halves_the_limit_then_successes_raise_it_again(client: DeepSeek) -> None:
    fault = faults_once(times=1, Status=429, Retry_After=0)  # the first request only
    requests = [{"question": q, "extra_headers": fault} for q in QUESTIONS]
    controls = Concurrency(start=4, maximum=4, increase_every=2)
    changes: list[LimitChange] = []
    results = client.batch(requests, concurrency=controls, on_limit=changes.append)
    assert all(r.ok for r in results)
    steps = [(c.limit, c.reason) for c in changes]
    assert steps == [(4, "start"), (2, "overload"), (3, "increase"), (4, "increase")]


async def test_async_on_limit_sees_the_same_steps(aclient: AsyncDeepSeek) -> None:
    fault = faults_once(times=1, Status=429, Retry_After=0)
    requests = [{"question": q, "extra_headers": fault} for q in QUESTIONS]
    controls = Concurrency(start=4, maximum=4, increase_every=2)
    changes: list[LimitChange] = []
    await aclient.batch(requests, concurrency=controls, on_limit=changes.append)
    steps = [(c.limit, c.reason) for c in changes]
    assert steps == [(4, "start"), (2, "overload"), (3, "increase"), (4, "increase")]


def test_rate_limited_after_all_retries_is_a_per_line_error(client: DeepSeek) -> None:
    always = {"X-Sim-Status": "429", "X-Sim-Retry-After": "0"}
    results = client.batch(["ok", {"question": "no", "extra_headers": always}], concurrency=2)
    assert results[0].ok
    assert results[1].error is not None and results[1].error.type == RateLimitError.__name__


def test_ctrl_c_ends_a_sync_batch_at_once_and_nothing_is_reported_after(sim: Any) -> None:
    """SIGINT once three answers are in, while three others stall for a minute: the batch
    raises KeyboardInterrupt within seconds, having reported exactly the three, and the
    client closes without waiting for the stalled ones."""
    stall = {"X-Sim-Stall-After-Events": "1", "X-Sim-Stall-Ms": "60000"}
    requests: list[Any] = [*QUESTIONS[:3]]
    requests += [{"question": q, "extra_headers": stall} for q in QUESTIONS[3:6]]
    seen: list[int] = []
    three = threading.Event()

    def on_result(result: BatchResult) -> None:
        seen.append(result.index)
        if len(seen) == 3:
            three.set()

    sent: list[float] = []

    def interrupt() -> None:
        if three.wait(30):
            sent.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    client = DeepSeek("sk-test-000000", base_url=sim.base_url)
    try:
        with pytest.raises(KeyboardInterrupt):
            client.batch(requests, concurrency=6, on_result=on_result)
        raised = time.monotonic()
    finally:
        client.close()
    closed = time.monotonic()
    assert raised - sent[0] < 10, "the batch waited for the stalled requests"
    assert closed - raised < 10, "closing the client waited for the stalled requests"
    assert sorted(seen) == [0, 1, 2]


async def test_async_batch_gives_what_the_sync_batch_gives(sim: Any) -> None:
    requests: list[Any] = [*QUESTIONS, {"question": "hot", "temperature": 9}]
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        expected = client.batch(requests, concurrency=3)
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url, retry=FIXED_JITTER) as ac:
        seen: list[int] = []
        got = await ac.batch(requests, on_result=lambda r: seen.append(r.index))
    assert [r.content for r in got] == [r.content for r in expected]
    assert [r.error for r in got] == [r.error for r in expected]
    assert sorted(seen) == list(range(len(requests)))


# ---- packs against the simulator, which follows the requested shape -------------------

TICKET_SYSTEM = (
    "You triage support tickets for an online shop. Read the customer's message and label "
    "it billing (charges, refunds, invoices), bug (the app or site misbehaves), delivery "
    "(orders, shipping, returns) or other. Reply with the label and one short reason. "
) * 3  # a shared instruction of about 150 tokens


def _thinking(on: bool) -> dict[str, Any]:
    return {"thinking": True, "effort": "low"} if on else {"thinking": False}


def _essence(result: BatchResult) -> tuple[Any, ...]:
    """A result without its cache hits (those depend on which request got there first)."""
    usage = result.usage
    tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else None
    return result.index, result.content, result.packed, result.prompt_tokens_saved, tokens


def _measured(results: list[BatchResult]) -> int:
    return sum(r.usage.prompt_tokens for r in results if r.usage)


@pytest.mark.parametrize("thinking", [False, True])
def test_a_pack_against_the_simulator_really_packs(sim_factory: Any, thinking: bool) -> None:
    sim = sim_factory()
    asks = QUESTIONS[:10]
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        singles = client.batch(asks, system=TICKET_SYSTEM, concurrency=2, **_thinking(thinking))
        sim.reset_stats()
        packed = client.batch(
            asks, pack=4, system=TICKET_SYSTEM, concurrency=2, **_thinking(thinking)
        )
    assert [r.packed for r in packed] == [4] * 8 + [2] * 2
    assert [r.content for r in packed] == [r.content for r in singles]  # each as if alone
    assert sim.stats.requests == sim.stats.packed_requests == 3
    saved = sum(r.prompt_tokens_saved for r in packed)
    assert saved == _measured(singles) - _measured(packed) > 0  # the estimate is the meter's


async def test_an_async_pack_against_the_simulator_gives_the_sync_results(
    sim_factory: Any,
) -> None:
    sim = sim_factory()
    asks = QUESTIONS[:10]
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        expected = client.batch(asks, pack=4, system=TICKET_SYSTEM, thinking=False)
        singles = client.batch(asks, system=TICKET_SYSTEM, thinking=False)
    sim.reset_stats()
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url) as ac:
        got = await ac.batch(asks, pack=4, system=TICKET_SYSTEM, thinking=False)
    assert list(map(_essence, got)) == list(map(_essence, expected))
    assert [r.packed for r in got] == [4] * 8 + [2] * 2 and sim.stats.packed_requests == 3
    saved = sum(r.prompt_tokens_saved for r in got)
    assert saved == _measured(singles) - _measured(got) > 0


@pytest.mark.parametrize(("fault", "packs"), [("drop", 2), ("duplicate", 2), ("ignore", 0)])
def test_a_misbehaving_pack_falls_back_to_single_requests(
    sim_factory: Any, fault: str, packs: int
) -> None:
    sim = sim_factory(pack_fault=fault)
    requests = [{"id": f"q{i}", "question": q} for i, q in enumerate(QUESTIONS[:10])]
    seen: list[int] = []
    with DeepSeek("sk-test-000000", base_url=sim.base_url) as client:
        results = client.batch(
            requests, pack=5, concurrency=2, on_result=lambda r: seen.append(r.index)
        )
        stats = (sim.stats.requests, sim.stats.packed_requests)
        singles = [client.chat(q).content for q in QUESTIONS[:10]]
    assert [r.id for r in results] == [r["id"] for r in requests]  # every line, in order
    assert sorted(seen) == list(range(10))  # each once
    assert [r.content for r in results] == singles  # answered alone
    assert all(r.ok and r.packed == 0 and r.prompt_tokens_saved == 0 for r in results)
    assert stats == (2 + 10, packs)  # two packs that did not verify, then ten singles


async def test_an_async_misbehaving_pack_falls_back_to_single_requests(sim_factory: Any) -> None:
    sim = sim_factory()
    drop_first = faults_once(times=1, Pack_Fault="drop")  # the first pack only
    seen: list[int] = []
    async with AsyncDeepSeek("sk-test-000000", base_url=sim.base_url) as ac:
        results = await ac.batch(
            QUESTIONS[:10], pack=5, concurrency=1, extra_headers=drop_first,
            on_result=lambda r: seen.append(r.index),
        )  # fmt: skip
        singles = [(await ac.chat(q)).content for q in QUESTIONS[:5]]
    assert [r.index for r in results] == list(range(10)) and sorted(seen) == list(range(10))
    assert [r.packed for r in results] == [0] * 5 + [5] * 5  # the second pack verified
    assert [r.content for r in results[:5]] == singles
    assert sim.stats.packed_requests == 2 and sim.stats.requests == 2 + 5 + 5


def test_a_broken_packed_stream_is_resumed_and_still_verifies(sim_factory: Any) -> None:
    sim = sim_factory()
    asks = QUESTIONS[:5]
    broken = faults_once(times=1, Drop_After_Events=8)
    with DeepSeek("sk-test-000000", base_url=sim.base_url, retry=FIXED_JITTER) as client:
        results = client.batch(asks, pack=5, concurrency=1, extra_headers=broken, thinking=False)
        singles = [client.chat(q, thinking=False).content for q in asks]
    assert [r.packed for r in results] == [5] * 5
    assert [r.content for r in results] == singles
    assert sim.stats.prefix_requests == 1  # the pack went on from where it broke


# ---- packs answered as asked: a local server in DeepSeek's wire format --------------


class PackingServer(BaseHTTPRequestHandler):
    """Answers a JSON-mode request that lists questions with `{"answers": [...]}` (as a
    model following the instructions would), anything else with "alone: <question>"."""

    bodies: ClassVar[list[dict[str, Any]]] = []
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.bodies.append(body)
        last = body["messages"][-1]["content"]
        if body.get("response_format") == {"type": "json_object"}:
            questions = orjson.loads(last)["questions"]
            answers = [{"i": q["i"], "answer": f"A{q['i']}: {q['question']}"} for q in questions]
            text = orjson.dumps({"answers": list(reversed(answers))}).decode()  # any order
        else:
            text = f"alone: {last}"
        self._sse(text, count_prompt(body["messages"]))

    def _sse(self, text: str, prompt: int) -> None:
        usage = {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7}
        chunks = [
            {"delta": {"role": "assistant", "content": text}, "finish_reason": None},
            {"delta": {}, "finish_reason": "stop"},
        ]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, choice in enumerate(chunks):
            data = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                    "model": "deepseek-flash", "choices": [{"index": 0, **choice}]}  # fmt: skip
            if i == len(chunks) - 1:
                data["usage"] = usage
            self.wfile.write(b"data: " + orjson.dumps(data) + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def packing_server() -> Any:
    PackingServer.bodies = []
    server = LocalHTTPServer(PackingServer)
    yield server
    server.close()


def test_packed_answers_are_split_back_in_order(packing_server: Any) -> None:
    url = f"http://127.0.0.1:{packing_server.port}"
    system = "You classify support tickets. " * 20  # a long shared instruction
    with DeepSeek("sk-test-000000", base_url=url) as client:
        results = client.batch(QUESTIONS[:10], pack=4, system=system, concurrency=2)
    assert [r.content for r in results] == [f"A{i % 4}: {q}" for i, q in enumerate(QUESTIONS[:10])]
    assert [r.packed for r in results] == [4] * 8 + [2] * 2
    packs = PackingServer.bodies
    assert len(packs) == 3 and all("json" in p["messages"][0]["content"] for p in packs)
    alone = sum(count_prompt([{"role": "system", "content": system},
                              {"role": "user", "content": q}]) for q in QUESTIONS[:10])  # fmt: skip
    sent = sum(count_prompt(p["messages"]) for p in packs)
    assert sum(r.prompt_tokens_saved for r in results) == alone - sent > 0
    assert sum(r.usage.prompt_tokens for r in results if r.usage) == sent  # shares add up


def test_a_single_leftover_question_is_asked_alone(packing_server: Any) -> None:
    url = f"http://127.0.0.1:{packing_server.port}"
    with DeepSeek("sk-test-000000", base_url=url) as client:
        results = client.batch(QUESTIONS[:3], pack=2, concurrency=1)
    assert [r.packed for r in results] == [2, 2, 0]
    assert results[2].content == f"alone: {QUESTIONS[2]}"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"answers": [{"i": 0, "answer": "a"}]}',  # too few
        '{"answers": [{"i": 0, "answer": "a"}, {"i": 0, "answer": "b"}]}',  # twice
        '{"answers": [{"i": 0, "answer": "a"}, {"i": 2, "answer": "b"}]}',  # out of range
        '{"answers": [{"i": 0, "answer": "a"}, {"i": true, "answer": "b"}]}',
        '{"answers": [{"i": 0, "answer": "a"}, {"i": 1, "answer": 3}]}',
        '{"answer": "a", "score": 1, "tags": [], "done": true}',  # the simulator's shape
        '[{"i": 0, "answer": "a"}, {"i": 1, "answer": "b"}]',
    ],
)
def test_split_refuses_anything_but_one_answer_per_question(content: str) -> None:
    assert split_answers(content, 2) is None


def test_split_accepts_any_order_and_the_prompt_says_json() -> None:
    content = '{"answers": [{"i": 1, "answer": "b"}, {"i": 0, "answer": "a"}]}'
    assert split_answers(content, 2) == ["a", "b"]
    assert all("json" in m["content"] for m in pack_messages(["q"], None)[:1])


# ---- the controller, deterministic ------------------------------------------------------


def test_aimd_steps() -> None:
    aimd = AIMD(Concurrency(start=4, maximum=6, increase_every=2))
    for _ in range(6):
        aimd.success(aimd.epoch)
    assert aimd.limits == [4, 5, 6]  # +1 per 2 successes, capped at the maximum
    stale = aimd.epoch
    aimd.overload(stale)
    aimd.overload(stale)  # the same congestion event: halved once
    assert aimd.limits == [4, 5, 6, 3]
    aimd.overload(aimd.epoch)
    aimd.overload(aimd.epoch)
    assert aimd.limits == [4, 5, 6, 3, 1]  # never below the minimum


def test_aimd_halves_when_first_tokens_get_much_slower_than_their_baseline() -> None:
    aimd = AIMD(Concurrency(start=8, maximum=8, warmup=4, latency_floor=0.1))
    rng = random.Random(7)
    for _ in range(10):
        aimd.success(aimd.epoch, latency=0.2 + rng.uniform(-0.02, 0.02))
    assert aimd.limits == [8]
    aimd.success(aimd.epoch, latency=0.25)  # slower, but not well above the baseline
    assert aimd.limits == [8]
    aimd.success(aimd.epoch, latency=1.5)
    assert [(c.limit, c.reason) for c in aimd.history] == [(8, "start"), (4, "latency")]


def test_fixed_concurrency_never_moves() -> None:
    aimd = AIMD(Concurrency.coerce(3))
    aimd.overload(aimd.epoch)
    for _ in range(20):
        aimd.success(aimd.epoch)
    assert aimd.limits == [3]


def _drive(run: BatchRun, pick: Any, limited: set[int]) -> list[int]:
    """Step `run` as a shell does, with no I/O: `pick` chooses which unit in flight
    finishes next; the requests in `limited` get one 429 (retried) first. Returns the
    limit at each start."""
    flying: list[Unit] = []
    at_start: list[int] = []
    landings: list[Observed | Finished] = []
    landing: Observed | Finished | None = None
    while (units := run.step(landing, 0.0)) is not None:
        flying += units
        at_start += [run.controller.limit] * len(units)
        assert not units or len(flying) <= run.controller.limit
        landings = landings or _landings(flying.pop(pick(len(flying))), limited)
        landing = landings.pop(0)
    return at_start


def _landings(unit: Unit, limited: set[int]) -> list[Observed | Finished]:
    """What a unit's worker hands the run: maybe a 429 retried, then its answer."""
    index = unit.jobs[0].index
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    done = Finished(unit, ChatResult(content=f"a{index}", usage=usage))
    if index not in limited:
        return [done]
    limited.discard(index)
    return [Observed(unit, Retrying(1, 0.0, "429: Rate Limit Reached", 429), 0.0), done]


def test_a_scripted_run_records_aimd_exactly() -> None:
    controls = Concurrency(start=2, maximum=4, increase_every=2)
    run = BatchRun.plan([f"q{i}" for i in range(12)], concurrency=controls)
    _drive(run, lambda n: 0, limited={4})  # finished first in, first out
    assert run.controller.limits == [2, 3, 4, 2, 3, 4]
    assert [c.reason for c in run.controller.history][3] == "overload"
    assert [r.content for r in run.ordered()] == [f"a{i}" for i in range(12)]


@pytest.mark.parametrize("seed", range(5))
def test_any_completion_order_keeps_the_bounds_and_every_line(seed: int) -> None:
    rng = random.Random(seed)
    controls = Concurrency(start=2, maximum=5, increase_every=2)
    run = BatchRun.plan([f"q{i}" for i in range(40)], concurrency=controls)
    _drive(run, rng.randrange, limited=set(range(0, 40, 7)))
    history = run.controller.history
    assert [r.content for r in run.ordered()] == [f"a{i}" for i in range(40)]
    assert all(1 <= c.limit <= 5 for c in history)
    overloads = [c for c in history if c.reason == "overload"]
    assert 1 <= len(overloads) <= 6  # at most once per congestion event
    for before, after in itertools.pairwise(history):
        if after.reason == "increase":
            assert after.limit == before.limit + 1
        else:
            assert after.limit == max(1, before.limit // 2)
