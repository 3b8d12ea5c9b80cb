"""`RedisRateLimiter`: token buckets in Redis, exact across any number of gateway instances.

A per-instance limiter lets N instances admit N times the limit (the LiteLLM bug this
replaces). Here every decision is one Lua script run by Redis, so checks and takes by all
instances are serialized, and time comes from Redis' own clock (`TIME` inside the
script), so instances with skewed clocks still agree on how much has refilled.

A principal has a requests bucket and optionally a tokens bucket; `take()` charges both in
the same script, all or nothing: a request refused for tokens does not use up a request.
Both keys of a principal share a hash tag, so the script runs in one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from dskit.gateway._settings import RateLimit

if TYPE_CHECKING:
    import redis.asyncio

# KEYS: one hash per bucket. ARGV: rate, burst, cost for each bucket (in KEYS order).
# Takes every cost or none; returns the wait in seconds as a string ("0" when taken).
BUCKETS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels, wait = {}, 0
for i = 1, #KEYS do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'stamp')
  local tokens, stamp = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or stamp == nil then tokens, stamp = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
  levels[i] = tokens
  if tokens < cost then wait = math.max(wait, (cost - tokens) / rate) end
end
if wait > 0 then return tostring(wait) end
for i = 1, #KEYS do
  local rate, burst, cost = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i] - cost), 'stamp', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return '0'
"""


class CostTooHighError(ValueError):
    """A single request costs more than the bucket can ever hold: waiting cannot help."""


class RedisRateLimiter:
    """Requests (and optionally tokens) per principal, shared by every instance.

    `limit` is the requests bucket (`RateLimit(rate=rpm / 60, burst=rpm)` for a per-minute
    limit); `tokens` the optional tokens bucket, charged by `take()`.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        limit: RateLimit,
        *,
        tokens: RateLimit | None = None,
        namespace: str = "dskit:gw",
    ) -> None:
        if not namespace or any(c in namespace for c in "{} "):
            raise ValueError(f"invalid Redis namespace {namespace!r}")
        self.redis = client
        self.limit = limit
        self.tokens = tokens
        self._ns = namespace
        self._script = client.register_script(BUCKETS_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisRateLimiter(limit={self.limit!r}, tokens={self.tokens!r})"

    def _key(self, principal: str, bucket: str) -> str:
        tag = principal
        if not tag or any(c in tag for c in "{} ") or len(tag) > 128:
            tag = hashlib.sha256(principal.encode()).hexdigest()[:32]
        return f"{self._ns}:ratelimit:{{{tag}}}:{bucket}"

    async def acquire(self, key: str, cost: float = 1.0) -> float:
        """The `RateLimiter` protocol: `cost` requests for `key`; 0.0 or seconds to wait."""
        return await self._run(key, [("requests", self.limit, cost)])

    async def take(self, key: str, requests: float = 1.0, tokens: float = 0.0) -> float:
        """Charge requests and tokens at once (all or nothing); 0.0 or seconds to wait."""
        buckets = [("requests", self.limit, requests)]
        if self.tokens is not None and tokens > 0:
            buckets.append(("tokens", self.tokens, tokens))
        return await self._run(key, buckets)

    async def _run(self, key: str, buckets: list[tuple[str, RateLimit, float]]) -> float:
        keys, args = [], []
        for name, limit, cost in buckets:
            if cost < 0:
                raise ValueError(f"a {name} cost cannot be negative")
            if cost > limit.burst:
                raise CostTooHighError(
                    f"one request needs {cost:g} {name}, more than the limit of {limit.burst}"
                )
            keys.append(self._key(key, name))
            args += [repr(limit.rate), str(limit.burst), repr(float(cost))]
        reply = await self._script(keys=keys, args=args)
        wait = float(reply.decode() if isinstance(reply, bytes) else reply)
        return max(0.0, wait)
