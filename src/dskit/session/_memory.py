"""Entity memory: what dropped turns named, kept as a short note. Pure functions, no I/O.

When the context policy drops old turns, the things they named go with them, and a later
"what did it cost?" has no price left in the prompt. With `ContextPolicy(memory=True)` the
session extracts the named things from the dropped turns and sends them, bounded, as a
"Known so far" note in the system message.

The extractor is deterministic (regular expressions, no model call, no NLP package):

- ids: URLs, emails, UUIDs, `#1234`, `ORD-7781` (upper-case prefix, dash, digits)
- code: backticked spans, `func()`, `Dotted.names`, `snake_case`, `camelCase`/`PascalCase`
- quantities: `$49.99`, `49.99 USD`, `3 kg`, `15%`, `2 GB`, `3 days`, `49元`, `3公斤`
- names: quoted names (`"Acme Pro"`, `“…”`, `《…》`) and two or more capitalised words;
  a run that starts a sentence loses its first word (a capital there says nothing)

Each mention keeps a snippet (the few words before it: "price: $49.99"). Merging keys a
quantity by the words before it (so "price: $59.99" replaces "price: $49.99": the latest
mention wins) and anything else by its text; the bound keeps the most recent, then the
most mentioned, within `max_entries` and `max_tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dskit._tokens import count_text
from dskit._validate import is_integer
from dskit.client._errors import ValidationError

Kind = Literal["id", "code", "quantity", "name"]
NOTE_HEADER = "Known so far (from earlier turns no longer shown):"
CONTEXT_WORDS = 4  # words before a mention kept in its snippet
CJK_CONTEXT = 8  # characters, when the words before are Chinese (no spaces)
MAX_SNIPPET = 120  # characters of a snippet; a longer one is cut at the front
MAX_NAME_WORDS = 5
MAX_TEXT = 20_000  # characters of a message read (the patterns run in linear time)
LOOK_BACK = 200  # characters before a mention searched for its clause


@dataclass(frozen=True, slots=True)
class EntityMemory:
    """How much the "known so far" note may hold."""

    max_entries: int = 24
    max_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_tokens"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ValidationError(f"{name} must be an integer >= 1, got {value!r}", param=name)


def memory_settings(value: Any) -> EntityMemory | None:
    """The settings a policy's `memory` option stands for (None: off)."""
    if value is True:
        return EntityMemory()
    if value is False or value is None:
        return None
    if isinstance(value, EntityMemory):
        return value
    raise ValidationError(
        f"memory must be a bool or an EntityMemory, got {value!r}", param="memory"
    )


@dataclass(frozen=True, slots=True)
class Mention:
    """One named thing in one message: its kind, text, snippet and merge key."""

    kind: Kind
    text: str
    snippet: str
    key: str


# ---- the patterns, in priority order: a match overlapping an earlier one is skipped ----

_NUM = r"(?<![\d.,])\d++(?:,\d++)*+(?:\.\d++)?"
_CN_NUM = r"(?<![零一二三四五六七八九十百千万两])[零一二三四五六七八九十百千万两]++"
_SCALE = r"(?:\s?(?:k|K|bn|million|billion|thousand))?"
_PER = r"(?:\s?/\s?[A-Za-z]+|\s(?:per|a|an)\s[a-z]+)?"
_CURRENCY_CODES = r"USD|EUR|GBP|CNY|RMB|JPY|HKD|CHF|CAD|AUD|dollars?|euros?|pounds?|yuan"
_UNITS = (
    r"%|percent|kg|g|mg|lbs?|oz|km|m|cm|mm|mi|miles?|ft|feet|inch(?:es)?|"
    r"[KMGT]B|[KMG]iB|bytes?|ms|s|secs?|seconds?|mins?|minutes?|h|hrs?|hours?|days?|"
    r"weeks?|months?|years?|°C|°F|L|ml|tokens?|GHz|MHz|W|kW|V"
)
_CN_UNITS = (
    r"元|块钱?|美元|欧元|英镑|人民币|公斤|千克|克|斤|吨|公里|千米|米|厘米|毫米|天|小时|"
    r"分钟|秒|周|星期|个月|年|岁|件|台|张|次|%|％"
)

PATTERNS: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    ("id", re.compile(r"https?://[^\s<>\"'`)\]]+[^\s<>\"'`)\].,;:!?]")),
    ("id", re.compile(r"(?<![\w.+-])[\w.+-]++@[\w-]++(?:\.[\w-]++)++")),
    ("id", re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b")),
    ("code", re.compile(r"`([^`\n]+)`")),
    ("id", re.compile(r"(?<![\w&#])#\d+\b")),
    ("id", re.compile(r"\b[A-Z][A-Z0-9]{1,9}(?:-(?=[A-Z0-9]*\d)[A-Z0-9]++)++\b")),
    ("quantity", re.compile(rf"(?:US\$|HK\$|[$€£¥])\s?{_NUM}{_SCALE}{_PER}")),
    ("quantity", re.compile(rf"{_NUM}{_SCALE}\s?(?:{_CURRENCY_CODES})\b{_PER}")),
    ("quantity", re.compile(rf"(?:{_NUM}|{_CN_NUM})\s?(?:{_CN_UNITS})")),
    ("quantity", re.compile(rf"{_NUM}\s?(?:{_UNITS})(?![A-Za-z]){_PER}")),
    ("code", re.compile(r"(?<![\w.])[A-Za-z_][\w.]*+\(\)")),
    ("code", re.compile(r"(?<![\w.])[A-Za-z_]\w*+(?:\.[A-Za-z_]\w*+)++\b(?!\()")),
    ("code", re.compile(r"\b_*+[A-Za-z][A-Za-z0-9]*+(?:_[A-Za-z0-9]++)++\b")),
    ("code", re.compile(r"\b[a-z]++[A-Z][A-Za-z0-9]*+\b|\b[A-Z][a-z0-9]++(?:[A-Z][a-z0-9]*+)++\b")),
    ("name", re.compile(r"\"([^\"\n]{2,60})\"|“([^”\n]{1,60})”|《([^》\n]{1,30})》")),
    ("name", re.compile(r"(?<![\w'&-])[A-Z][\w'&-]*+(?:\s++[A-Z][\w'&-]*+)++")),
)

# a capitalised word that starts a run mid-sentence but is not part of a name
_LEADING = "A An The I I'm I've I'd I'll This That These Those My Our Your His Her Their"
LEADING_WORDS = frozenset(_LEADING.split())
# words of a snippet that do not say what a quantity is (for its merge key)
_STOP = (
    "a an the is are was were be been it its of for to at in on by now then so and or "
    "but just only about around roughly approx approximately still also new old total "
    "that this which who what costs cost costing priced"
)
STOPWORDS = frozenset(_STOP.split())
CONJUNCTIONS = frozenset({"and", "or", "but", "so", "then", "also"})
_CLAUSE_END = re.compile(r"[.!?;,](?=\s|$)|[。！？；，、\n]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_FALSE_DOTTED = frozenset({"e.g", "i.e", "a.m", "p.m", "etc", "vs"})


def extract(text: str) -> tuple[Mention, ...]:
    """The named things in `text` (its first `MAX_TEXT` characters), in order."""
    text = text[:MAX_TEXT]
    taken = bytearray(len(text))
    found: list[tuple[int, Mention]] = []
    for kind, pattern in PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(taken[start:end]):
                continue
            mention = _mention(kind, text, match)
            if mention is not None:
                taken[start:end] = b"\x01" * (end - start)
                found.append((start, mention))
    return tuple(m for _, m in sorted(found, key=lambda item: item[0]))


def _mention(kind: Kind, text: str, match: re.Match[str]) -> Mention | None:
    value = next((g for g in match.groups() if g), match.group(0)).strip()
    start = match.start()
    if kind == "name":
        value, start = _name(text, match, value)
    elif kind == "code" and not _code_ok(match.group(0), value):
        return None
    if not value:
        return None
    before = _before(text, start)
    joint = "" if _CJK.search(before[-1:]) else " "
    snippet = _cut(f"{before}{joint}{text[start : match.end()]}".strip())
    return Mention(kind, value, snippet, _key(kind, value, before))


def _name(text: str, match: re.Match[str], value: str) -> tuple[str, int]:
    """A name's text and start, or "" when it is none (a lone word, a long quote)."""
    if match.group(0).startswith(('"', "“", "《")):
        quoted = len(value.split()) <= MAX_NAME_WORDS and not value[0].islower()
        return (value if quoted else ""), match.start()
    words = value.split()
    start = match.start()
    while words and (words[0] in LEADING_WORDS or _starts_sentence(text, start)):
        start = text.index(words[0], start) + len(words[0])
        start = len(text) - len(text[start:].lstrip())
        words = words[1:]
    if len(words) < 2:
        return "", start
    return " ".join(words[:MAX_NAME_WORDS]), start


def _starts_sentence(text: str, start: int) -> bool:
    head = text[max(0, start - LOOK_BACK) : start].rstrip(" \t\"'“(*-")
    return not head or head[-1] in ".!?:。！？\n"


def _code_ok(whole: str, value: str) -> bool:
    """A code-looking match that is not one: `e.g.`, `U.S.A`, a version such as `v1.2`."""
    if whole.startswith("`"):
        return True
    if "." in value and not value.endswith("()"):
        parts = value.split(".")
        return value.lower() not in _FALSE_DOTTED and max(map(len, parts)) >= 2
    return True


def _before(text: str, start: int) -> str:
    """The few words before `start` in the same sentence."""
    head = text[max(0, start - LOOK_BACK) : start]
    ends = list(_CLAUSE_END.finditer(head))
    clause = head[ends[-1].end() :] if ends else head
    words = clause.split()[-CONTEXT_WORDS:]
    while words and words[0].casefold() in CONJUNCTIONS:
        words = words[1:]
    if words and _CJK.search(words[-1]):
        words = [words[-1][-CJK_CONTEXT:]]
    return " ".join(words)


def _cut(snippet: str) -> str:
    return snippet if len(snippet) <= MAX_SNIPPET else "…" + snippet[-MAX_SNIPPET + 1 :]


def _key(kind: Kind, value: str, before: str) -> str:
    """What makes two mentions the same thing: a quantity is what it measures (the last
    words before it that say so, or its label in "price: $49.99", with its unit's kind),
    anything else its own text."""
    if kind != "quantity":
        return f"{kind}:{value.casefold()}"
    label = before.endswith((":", "："))
    words = [w for w in re.findall(r"[\w']+", before.casefold()) if w not in STOPWORDS]
    if _CJK.search(before):
        words = [before.rstrip("：:")[-4:]]
    if not words:
        return f"quantity:{value.casefold()}"
    size = 2 if not label or words[-1].isdigit() else 1
    return f"quantity:{' '.join(words[-size:])}:{_unit_kind(value)}"


def _unit_kind(value: str) -> str:
    if re.search(r"[$€£¥元块]|USD|EUR|GBP|CNY|RMB|JPY|HKD|dollar|euro|yuan", value):
        return "money"
    letters = re.sub(rf"[\d\s.,]|{_CN_NUM}", "", value)
    return letters.casefold()


# ---- merging and bounding ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A remembered thing: its latest mention, that mention's turn, how often it came up."""

    mention: Mention
    turn: int
    count: int
    order: int  # when the latest mention came (higher: later)


def merge(mentions: Iterable[tuple[int, Sequence[Mention]]]) -> list[Entry]:
    """One entry per key from `(turn, mentions)` in conversation order; latest wins."""
    entries: dict[str, Entry] = {}
    order = 0
    for turn, found in mentions:
        for mention in found:
            order += 1
            seen = entries.pop(mention.key, None)
            count = seen.count + 1 if seen else 1
            entries[mention.key] = Entry(mention, turn, count, order)
    return list(entries.values())


def render_entry(entry: Entry) -> str:
    return f"- {entry.mention.snippet} (turn {entry.turn})"


def bounded(entries: Sequence[Entry], memory: EntityMemory) -> list[Entry]:
    """The entries the note keeps: most recent first, then most mentioned, within
    `max_entries` and (header included) `max_tokens`; in conversation order."""
    ranked = sorted(entries, key=lambda e: (e.turn, e.count, e.order), reverse=True)
    kept: list[Entry] = []
    used = count_text(NOTE_HEADER)
    for entry in ranked[: memory.max_entries]:
        cost = count_text("\n" + render_entry(entry))
        if used + cost > memory.max_tokens:
            continue
        kept.append(entry)
        used += cost
    kept.sort(key=lambda e: e.order)
    while kept and count_text(render(kept)) > memory.max_tokens:
        kept.remove(min(kept, key=lambda e: (e.turn, e.count, e.order)))
    return kept


def render(entries: Sequence[Entry]) -> str:
    return "\n".join([NOTE_HEADER, *(render_entry(e) for e in entries)])


def note(mentions: Iterable[tuple[int, Sequence[Mention]]], memory: EntityMemory) -> str:
    """The "known so far" note for these mentions, or "" when there is nothing to say."""
    kept = bounded(merge(mentions), memory)
    return render(kept) if kept else ""


class MentionCache:
    """Each stored message's mentions, extracted once (while its text stays the same)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[object, str, tuple[Mention, ...]]] = {}
        self.extractions = 0

    def mentions(self, owner: object, text: str) -> tuple[Mention, ...]:
        cached = self._seen.get(id(owner))
        if cached is not None and cached[0] is owner and cached[1] == text:
            return cached[2]
        self.extractions += 1
        found = extract(text)
        self._seen[id(owner)] = (owner, text, found)
        return found

    def __len__(self) -> int:
        return len(self._seen)

    def prune(self, live: Iterable[object]) -> None:
        """Forget messages no longer in the history."""
        keep = {id(o) for o in live}
        self._seen = {k: v for k, v in self._seen.items() if k in keep}
