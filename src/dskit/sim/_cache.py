"""A real prefix cache of prompts, in "prefix units" as DeepSeek describes them.

The prompt is a token sequence: its start, the tool definitions and each message
contribute as many tokens as `dskit._tokens` counts for them (the tokenizer, template
markers included), all identified by their digest and position; the generation prompt
at the end counts in `prompt_tokens` but is never cached (the next turn's prompt has the
answer there).

The simulator's model of DeepSeek's units (docs/simulator.md): a unit ends at the end of
every message (the end of a user input, of a model output, of a tool result, of the
system prompt and tool definitions) and every `UNIT` tokens inside a long message. Units
are hashed as a chain (each unit's hash covers everything before it), so a request hits
the longest run of leading units that an earlier prompt stored, and `hit_tokens` is where
the last of them ends. So A+B then A+B+C hits A+B; A+B then A+C hits A (stored as a
unit of its own when A+B was asked). A partial last interval inside a message is never a
unit of its own.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dskit._tokens import COUNTER, GENERATION_OVERHEAD
from dskit.sim._text import digest

UNIT = 64  # the interval of units inside a long message


@dataclass(frozen=True, slots=True)
class CacheResult:
    prompt_tokens: int
    hit_tokens: int

    @property
    def miss_tokens(self) -> int:
        return self.prompt_tokens - self.hit_tokens


def unit_hashes(
    root: bytes, segments: Iterable[tuple[bytes, int]]
) -> tuple[list[tuple[bytes, int]], int]:
    """The chain hashes of a sequence's units, each with the position where it ends, for
    a sequence given as (digest, count) runs (one run per message)."""
    units: list[tuple[bytes, int]] = []
    current = hashlib.blake2b(root, digest_size=16)
    total = 0
    for index, (seg_digest, count) in enumerate(segments):
        start = 0
        while start < count:
            take = min(UNIT, count - start)
            current.update(seg_digest + start.to_bytes(8, "big") + take.to_bytes(8, "big"))
            start += take
            # an interval, or the end of a message (the prompt's start is not one)
            if take == UNIT or (start == count and index > 0):
                units.append((current.digest(), total + start))
                current = hashlib.blake2b(units[-1][0], digest_size=16)
        total += count
    return units, total


class PrefixCache:
    """A bounded LRU of unit hashes; not thread-safe (it lives on the server's loop)."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()

    def lookup_and_store(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        thinking: bool = True,
    ) -> CacheResult:
        """Count the tokens of this prompt's cached leading units, then remember all its
        units. `prompt_tokens` is `dskit._tokens.count_prompt` of the same request."""
        segments = [(digest(what), n) for what, n in COUNTER.pieces(messages, tools)]
        units, total = unit_hashes(model.encode(), segments)
        hit = 0
        for unit, end in units:
            if unit not in self._blocks:
                break
            hit = end
        self._store([unit for unit, _ in units])
        return CacheResult(total + GENERATION_OVERHEAD[thinking], hit)

    def _store(self, hashes: list[bytes]) -> None:
        if self.capacity <= 0:
            return
        for block in hashes:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
