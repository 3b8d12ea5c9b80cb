"""Token estimates by DeepSeek's documented rule of thumb.

The docs say one English character is about 0.3 token and one Chinese character about
0.6 token. We count CJK ideographs (and full-width punctuation) at 0.6 and everything else
at 0.3, and round up, so a non-empty text is at least one token. The simulator reports
these numbers as usage, and sessions use them (calibrated by real usage) for budgets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

CJK_CLASS = r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
CJK = re.compile(CJK_CLASS)  # ideographs and full-width punctuation (the simulator's too)
ASCII_RATE = 0.3
CJK_RATE = 0.6
MESSAGE_OVERHEAD = 4  # role markers and separators around each message


def estimate_tokens(text: str) -> int:
    """Estimated token count of `text` (0 for the empty string)."""
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
        function = call.get("function") or {}
        parts.append(str(function.get("name") or ""))
        parts.append(str(function.get("arguments") or ""))
    return "".join(parts)


def estimate_message_tokens(message: Mapping[str, Any]) -> int:
    return MESSAGE_OVERHEAD + estimate_tokens(message_text(message))


def estimate_messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    return sum(estimate_message_tokens(m) for m in messages)


# The counting API the rest of dskit uses (sessions' budgets, the simulator's usage). It
# is the single seam for the tokenizer: today the rule of thumb above.


def count_text(text: str) -> int:
    """Tokens of a piece of model output or input text."""
    return estimate_tokens(text)


def count_prompt(messages: Iterable[Mapping[str, Any]], *, thinking: bool = True) -> int:
    """Prompt tokens of a chat request's messages, chat-template overhead included."""
    del thinking  # the rule of thumb ignores it; the tokenizer's template does not
    return estimate_messages_tokens(messages)
