"""The context cache: repeated prompt prefixes hit in whole prefix units (message ends,
and every 64 tokens inside a long message)."""

from __future__ import annotations

from typing import Any

import httpx2

from dskit._tokens import GENERATION_OVERHEAD, count_prompt
from tests.conftest import wait_until
from tests.sim.sim_helpers import AUTH

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 40}


def cacheable(usage: Any) -> int:
    """The prompt without its generation prompt (thinking on): what the cache stores."""
    tokens: int = usage["prompt_tokens"] - GENERATION_OVERHEAD[True]
    return tokens


def usage_of(
    http: httpx2.Client, messages: list[dict[str, Any]], model: str = "deepseek-flash"
) -> Any:
    response = http.post("/chat/completions", json={"model": model, "messages": messages})
    assert response.status_code == 200, response.text
    return response.json()["usage"], response.json()["choices"][0]["message"]


def test_turns_of_one_conversation_hit_the_cache(sim_factory: Any) -> None:
    sim = sim_factory()
    with httpx2.Client(base_url=sim.base_url, headers=AUTH) as http:
        turn1 = [SYSTEM, {"role": "user", "content": "First question about caching"}]
        usage1, reply = usage_of(http, turn1)
        assert usage1["prompt_tokens"] == count_prompt(turn1)
        assert usage1["prompt_cache_hit_tokens"] == 0
        assert usage1["prompt_cache_miss_tokens"] == usage1["prompt_tokens"]

        turn2 = [*turn1, {"role": "assistant", "content": reply["content"]}]
        turn2.append({"role": "user", "content": "And a follow-up"})
        usage2, _ = usage_of(http, turn2)
        hit = usage2["prompt_cache_hit_tokens"]
        assert hit == cacheable(usage1)  # the first prompt, to the end of its user input
        assert hit + usage2["prompt_cache_miss_tokens"] == usage2["prompt_tokens"]
        assert usage2["prompt_tokens_details"] == {"cached_tokens": hit}

        again, _ = usage_of(http, turn2)
        assert again["prompt_cache_hit_tokens"] == cacheable(again)  # all but the generation


def test_a_and_b_then_a_and_c_hits_a(sim_factory: Any) -> None:
    """The sheet's example: units at message ends, so A is stored apart from A+B."""
    sim = sim_factory()
    with httpx2.Client(base_url=sim.base_url, headers=AUTH) as http:
        a = {"role": "user", "content": "A question about rivers " * 20}
        b = {"role": "assistant", "content": "An answer about rivers"}
        usage_of(http, [SYSTEM, a, b, {"role": "user", "content": "B"}])
        usage, _ = usage_of(http, [SYSTEM, a, {"role": "assistant", "content": "other"},
                                   {"role": "user", "content": "C"}])  # fmt: skip
        assert (
            usage["prompt_cache_hit_tokens"]
            == count_prompt([SYSTEM, a]) - (GENERATION_OVERHEAD[True])
        )


def test_only_a_repeated_prefix_hits(sim_factory: Any) -> None:
    sim = sim_factory()
    with httpx2.Client(base_url=sim.base_url, headers=AUTH) as http:
        usage_of(http, [SYSTEM, {"role": "user", "content": "one"}])
        changed_start = [{"role": "system", "content": "Different. " + SYSTEM["content"]}]
        usage, _ = usage_of(http, [*changed_start, {"role": "user", "content": "one"}])
        assert usage["prompt_cache_hit_tokens"] == 0
        other_model, _ = usage_of(
            http, [SYSTEM, {"role": "user", "content": "one"}], "deepseek-v4-pro"
        )
        assert other_model["prompt_cache_hit_tokens"] == 0
        short, _ = usage_of(http, [{"role": "user", "content": "tiny"}])
        short_again, _ = usage_of(http, [{"role": "user", "content": "tiny"}])
        assert short["prompt_cache_hit_tokens"] == 0
        assert short_again["prompt_cache_hit_tokens"] == cacheable(short_again)  # a whole unit


def test_cache_is_a_bounded_lru(sim_factory: Any) -> None:
    sim = sim_factory(cache_blocks=4)
    with httpx2.Client(base_url=sim.base_url, headers=AUTH) as http:
        first = [SYSTEM, {"role": "user", "content": "a"}]
        usage_of(http, first)
        assert len(sim.app.cache) <= 4
        for n in range(3):
            usage_of(http, [{"role": "system", "content": f"filler {n} " * 120}])
        usage, _ = usage_of(http, first)
        assert usage["prompt_cache_hit_tokens"] == 0  # evicted
        assert len(sim.app.cache) == 4


def test_clear_cache_forgets_every_block(sim_factory: Any) -> None:
    sim = sim_factory()
    with httpx2.Client(base_url=sim.base_url, headers=AUTH) as http:
        turn = [SYSTEM, {"role": "user", "content": "remember me"}]
        usage_of(http, turn)
        assert usage_of(http, turn)[0]["prompt_cache_hit_tokens"] > 0
        sim.clear_cache()  # done on the server's loop: wait for it, then ask again
        wait_until(lambda: len(sim.app.cache) == 0, timeout=5)
        assert usage_of(http, turn)[0]["prompt_cache_hit_tokens"] == 0
