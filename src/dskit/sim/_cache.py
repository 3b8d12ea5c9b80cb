"""A real prefix cache of prompts, in DeepSeek's 64-token storage units.

The prompt is a token sequence: its start, the tool definitions and each message
contribute as many tokens as `dskit._tokens` counts for them (the tokenizer, template
markers included), all identified by their digest and position; the generation prompt
at the end counts in `prompt_tokens` but is never cached (the next turn's prompt has the
answer there).
Blocks of 64 tokens are hashed as a chain (each block's hash covers everything before
it), so a block hits only when the whole prompt up to its end was seen before, exactly
like a repeated prefix. A partial last block is never cached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dskit._tokens import COUNTER, GENERATION_OVERHEAD
from dskit.sim._text import digest

BLOCK = 64


@dataclass(frozen=True, slots=True)
class CacheResult:
    prompt_tokens: int
    hit_tokens: int

    @property
    def miss_tokens(self) -> int:
        return self.prompt_tokens - self.hit_tokens


def block_hashes(root: bytes, segments: Iterable[tuple[bytes, int]]) -> tuple[list[bytes], int]:
    """The chain hashes of the full blocks of a sequence given as (digest, count) runs."""
    hashes: list[bytes] = []
    current = hashlib.blake2b(root, digest_size=16)
    filled = total = 0
    for seg_digest, count in segments:
        start = 0
        while start < count:
            take = min(BLOCK - filled, count - start)
            current.update(seg_digest + start.to_bytes(8, "big") + take.to_bytes(8, "big"))
            filled += take
            start += take
            if filled == BLOCK:
                hashes.append(current.digest())
                current = hashlib.blake2b(hashes[-1], digest_size=16)
                filled = 0
        total += count
    return hashes, total


class PrefixCache:
    """A bounded LRU of block hashes; not thread-safe (it lives on the server's loop)."""

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
        """Count the cached leading blocks of this prompt, then remember all its blocks.
        `prompt_tokens` is `dskit._tokens.count_prompt` of the same request."""
        segments = [(digest(what), n) for what, n in COUNTER.pieces(messages, tools)]
        hashes, total = block_hashes(model.encode(), segments)
        hits = 0
        while hits < len(hashes) and hashes[hits] in self._blocks:
            hits += 1
        self._store(hashes)
        return CacheResult(total + GENERATION_OVERHEAD[thinking], hits * BLOCK)

    def _store(self, hashes: list[bytes]) -> None:
        if self.capacity <= 0:
            return
        for block in hashes:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
