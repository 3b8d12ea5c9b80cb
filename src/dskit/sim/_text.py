"""Deterministic pseudo-text, cut into the pieces a stream sends one per chunk.

A piece is a word with its leading space, one CJK character, or one punctuation mark.
Everything here is a pure function of a seed, so the simulator can answer the same
request with the same text every time (the property that makes resume testable).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

import orjson

from dskit._tokens import CJK, CJK_CLASS, COUNTER

_WORD_TEXT = (
    "the model answer stream token context window cache prefix server client request "
    "response message system user assistant tool call result value field record simple "
    "quick steady clear small large early late first last next every other same new old "
    "good short long open close read write send keep hold move turn find make take give "
    "show tell ask think know see look start stop run wait check build test learn plan "
    "data text word line page file note list table graph node edge path point range "
    "time day week year hour minute moment place world city river mountain ocean forest "
    "light sound color shape number letter question reason idea story example detail "
    "because while after before during under over between through across toward within "
    "often always never sometimes usually quietly carefully quickly slowly nearly almost "
    "is are was were will can may should would could has have had does did makes keeps"
)
_WORDS = _WORD_TEXT.split()
_HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能"
    "下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量"
    "都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各"
)
_PIECE = re.compile(rf"\s*(?:{CJK_CLASS}|[A-Za-z0-9_]+|[^\sA-Za-z0-9_])|\s+")


def digest(*parts: object) -> bytes:
    """A stable 16-byte digest of JSON-able parts (dict keys sorted)."""
    raw = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(raw, digest_size=16).digest()


def rng_for(seed: bytes, label: str) -> random.Random:
    """An independent random stream for one purpose (`label`) of one request."""
    return random.Random(hashlib.blake2b(seed + label.encode(), digest_size=8).digest())


def is_mostly_cjk(text: str) -> bool:
    letters = [c for c in text if not c.isspace()]
    return bool(letters) and len(CJK.findall(text)) * 2 > len(letters)


def split_pieces(text: str) -> list[str]:
    """Cut any text into pieces; `"".join(split_pieces(t)) == t` always holds."""
    return _PIECE.findall(text)


def token_pieces(text: str) -> list[str]:
    """Text cut into the tokenizer's tokens (so a piece is a real token), or into pieces
    as above without the tokenizer; `"".join` gives the text back either way."""
    tokens = COUNTER.split(text)
    return split_pieces(text) if tokens is None else tokens


def _english_sentence(rng: random.Random, first: bool) -> list[str]:
    count = rng.randint(4, 14)
    words = [rng.choice(_WORDS) for _ in range(count)]
    pieces = [("" if first else " ") + words[0].capitalize()]
    for index, word in enumerate(words[1:], start=1):
        if index > 2 and index < count - 2 and rng.random() < 0.08:
            pieces.append(",")
        pieces.append(" " + word)
    pieces.append(rng.choice(".....?!"))
    return pieces


def _chinese_sentence(rng: random.Random, first: bool) -> list[str]:
    count = rng.randint(6, 20)
    pieces = [rng.choice(_HANZI) for _ in range(count)]
    if count > 10:
        pieces.insert(rng.randint(4, count - 4), "，")
    pieces.append(rng.choice("。。。？！"))
    return pieces


def generate(rng: random.Random, target: int, chinese: bool) -> list[str]:
    """About `target` pieces of readable pseudo-text, ending at a sentence end."""
    sentence = _chinese_sentence if chinese else _english_sentence
    pieces: list[str] = []
    while len(pieces) < target:
        pieces.extend(sentence(rng, not pieces))
    return pieces


def cut_chars(pieces: Sequence[str], offset: int) -> list[str]:
    """The pieces after the first `offset` characters (a piece cut in two keeps its tail)."""
    out: list[str] = []
    position = 0
    for piece in pieces:
        end = position + len(piece)
        if end > offset:
            out.append(piece[max(0, offset - position) :])
        position = end
    return out


def apply_stop(pieces: Sequence[str], stop: Sequence[str]) -> list[str]:
    """The pieces before the first occurrence of any stop string (all when none occurs)."""
    text = "".join(pieces)
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if not hits:
        return list(pieces)
    limit = min(hits)
    out: list[str] = []
    position = 0
    for piece in pieces:
        if position >= limit:
            break
        out.append(piece[: limit - position])
        position += len(piece)
    return out
