"""DeepSeek's wire format: chunks, whole responses, usage and error bodies.

Streaming is the hot path, so a chunk is built from pre-encoded constant bytes around the
one variable part (the delta, or the text for FIM); only that part goes through orjson.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from dskit.sim._cache import CacheResult
from dskit.sim._plan import PlannedCall, Reply
from dskit.sim._text import digest

# 32 hex digits, the shape DeepSeek's system_fingerprint has had since 2026
FINGERPRINT = hashlib.md5(b"dskit simulator", usedforsecurity=False).hexdigest()
DONE = b"data: [DONE]\n\n"
KEEPALIVE_SSE = b": keep-alive\n\n"
KEEPALIVE_JSON = b"\n"
_dumps = orjson.dumps

# status -> (message, type) as DeepSeek words them
ERRORS: dict[int, tuple[str, str]] = {
    400: ("Invalid request", "invalid_request_error"),
    401: ("Authentication Fails, Your api key is invalid", "authentication_error"),
    402: ("Insufficient Balance", "unknown_error"),
    404: ("Not Found", "invalid_request_error"),
    405: ("Method Not Allowed", "invalid_request_error"),
    413: ("Request body too large", "invalid_request_error"),
    415: ("Expected request with `Content-Type: application/json`", "invalid_request_error"),
    422: ("Invalid parameters", "invalid_request_error"),
    429: ("Rate Limit Reached", "rate_limit_error"),
    500: ("Server Error: the server encountered an issue, please retry later", "server_error"),
    503: ("Server Overloaded: the server is busy, please retry later", "service_unavailable_error"),
}


def error_body(status: int, message: str | None = None, param: str | None = None) -> bytes:
    default, kind = ERRORS.get(status, ("Server Error" if status >= 500 else "Error", "api_error"))
    error = {"message": message or default, "type": kind, "param": param}
    error["code"] = "invalid_request_error"
    return _dumps({"error": error})


def usage_dict(reply: Reply, cache: CacheResult) -> dict[str, Any]:
    completion = reply.completion_tokens
    return {
        "prompt_tokens": cache.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": cache.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cache.hit_tokens},
        "prompt_cache_hit_tokens": cache.hit_tokens,
        "prompt_cache_miss_tokens": cache.miss_tokens,
        "completion_tokens_details": {"reasoning_tokens": len(reply.reasoning)},
    }


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every chunk of one response shares."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Envelope:
        return cls(str(uuid.uuid4()), int(time.time()), model)


def _tool_call(call: PlannedCall, index: int, full: bool) -> dict[str, Any]:
    arguments = call.arguments if full else ""
    function = {"name": call.name, "arguments": arguments}
    return {"index": index, "id": call.id, "type": "function", "function": function}


# the models that return logprobs (DeepSeek's docs: deepseek-flash; others ignore them)
LOGPROB_MODELS = frozenset({"deepseek-flash", "deepseek-v4-flash"})
ALTERNATIVES = ("the", "a", "and", "of", "to", "in", "is", "that", "it", "for", "on", "with",
                "as", "was", "at", "by", "an", "be", "this", "from")  # fmt: skip


def logprobs_wanted(data: Mapping[str, Any]) -> int | None:
    """How many top logprobs a request gets per token (None: no logprobs at all)."""
    if data.get("logprobs") is not True or data.get("model") not in LOGPROB_MODELS:
        return None
    top = data.get("top_logprobs")
    return top if isinstance(top, int) and not isinstance(top, bool) else 0


def token_logprob(piece: str, top: int) -> dict[str, Any]:
    """A deterministic logprob entry for one piece (one streamed token): its logprob
    from its digest, and `top` alternatives, the piece first, in decreasing order."""
    chosen = -round((int.from_bytes(digest(piece)[:2], "big") % 2000) / 1000, 3)
    entry: dict[str, Any] = {"token": piece, "logprob": chosen, "bytes": list(piece.encode())}
    others = [w for w in ALTERNATIVES if w != piece.strip()][: max(0, top - 1)]
    entry["top_logprobs"] = [
        {"token": t, "logprob": round(chosen - 0.5 * n, 3), "bytes": list(t.encode())}
        for n, t in enumerate([piece, *others][:top])
    ]
    return entry


def chat_completion(
    env: Envelope, reply: Reply, usage: dict[str, Any], logprobs: int | None = None
) -> bytes:
    """A whole non-streaming `chat.completion` body."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.content)}
    if reply.reasoning:
        message["reasoning_content"] = "".join(reply.reasoning)
    if reply.calls:
        message["tool_calls"] = [_tool_call(c, i, True) for i, c in enumerate(reply.calls)]
    finish = reply.finish_reason
    lp = (
        None
        if logprobs is None
        else {"content": [token_logprob(p, logprobs) for p in reply.content]}
    )
    choice = {"index": 0, "message": message, "logprobs": lp, "finish_reason": finish}
    return _dumps(
        {
            "id": env.id,
            "object": "chat.completion",
            "created": env.created,
            "model": env.model,
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": FINGERPRINT,
        }
    )


def text_completion(env: Envelope, reply: Reply, usage: dict[str, Any]) -> bytes:
    """A whole non-streaming FIM `text_completion` body."""
    choice = {
        "text": "".join(reply.content),
        "index": 0,
        "logprobs": None,
        "finish_reason": reply.finish_reason,
    }
    return _dumps(
        {
            "id": env.id,
            "object": "text_completion",
            "created": env.created,
            "model": env.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": usage,
        }
    )


class ChunkEncoder:
    """Encodes the SSE events of one chat stream from pre-encoded constant parts.

    A chunk is `head + variable part + tail`; the FIM encoder below differs only in the
    object name and the choice's fields around the variable part (the class constants).
    """

    OBJECT = b"chat.completion.chunk"
    CHOICE_OPEN = b'"index":0,"delta":'  # before the variable part
    CHOICE_REST = b',"logprobs":null,"finish_reason":'  # after it, then the finish reason
    EMPTY = b'{"content":""}'  # the variable part of the finish chunk
    LEAD = 2  # events sent together at the first token: the role and the first piece
    TAIL = 2  # the finish chunk and [DONE]

    def __init__(
        self, env: Envelope, include_usage: bool, reasoner: bool = False,
        logprobs: int | None = None,
    ) -> None:  # fmt: skip
        self._head = (
            b'data: {"id":"%s","object":"%s","created":%d,"model":%s,'
            b'"system_fingerprint":"%s","choices":[{%s'
            % (
                env.id.encode(),
                self.OBJECT,
                env.created,
                _dumps(env.model),
                FINGERPRINT.encode(),
                self.CHOICE_OPEN,
            )
        )
        usage_null = b',"usage":null' if include_usage else b""
        self._tail = self.CHOICE_REST + b"null}]%s}\n\n" % usage_null
        self.logprobs = logprobs
        self._logprob_tail = b',"finish_reason":null}]%s}\n\n' % usage_null
        self.reasoner = reasoner
        # per piece only the piece is encoded: everything around it is joined here, once
        content_end = b',"reasoning_content":null}' if reasoner else b"}"
        self._content_open = self._head + b'{"content":'
        self._content_end = content_end
        self._content_close = content_end + self._tail
        self._reasoning_open = self._head + b'{"content":null,"reasoning_content":'
        self._reasoning_close = b"}" + self._tail

    def delta(self, delta: Mapping[str, Any]) -> bytes:
        return self._head + _dumps(delta) + self._tail

    def role(self) -> bytes:
        if self.reasoner:
            return self.delta({"role": "assistant", "content": None, "reasoning_content": ""})
        return self.delta({"role": "assistant", "content": ""})

    def content(self, piece: str) -> bytes:
        if self.logprobs is None:
            return self._content_open + _dumps(piece) + self._content_close
        logprob = _dumps({"content": [token_logprob(piece, self.logprobs)]})
        return (
            self._content_open + _dumps(piece) + self._content_end + b',"logprobs":'
            + logprob + self._logprob_tail
        )  # fmt: skip

    def reasoning(self, piece: str) -> bytes:
        return self._reasoning_open + _dumps(piece) + self._reasoning_close

    def tool_calls(self, call: PlannedCall, index: int) -> list[bytes]:
        events = [self.delta({"tool_calls": [_tool_call(call, index, False)]})]
        for fragment in call.fragments:
            part = {"index": index, "function": {"arguments": fragment}}
            events.append(self.delta({"tool_calls": [part]}))
        return events

    def final(self, finish_reason: str, usage: dict[str, Any]) -> bytes:
        finish = b'"%s"}],"usage":' % finish_reason.encode()
        return self._head + self.EMPTY + self.CHOICE_REST + finish + _dumps(usage) + b"}\n\n"

    def malformed(self) -> bytes:
        return self._head + b'{"content":"\xe2\x80\xa6\n\n'

    def events(self, reply: Reply, usage: dict[str, Any]) -> list[bytes]:
        """Every event of the stream, in order: role, pieces, finish chunk, [DONE]."""
        events = [self.role()]
        events += [self.reasoning(p) for p in reply.reasoning]
        events += [self.content(p) for p in reply.content]
        for index, call in enumerate(reply.calls):
            events += self.tool_calls(call, index)
        events.append(self.final(reply.finish_reason, usage))
        events.append(DONE)
        return events


class TextChunkEncoder(ChunkEncoder):
    """The events of a FIM stream: `text_completion` chunks with `choices[].text`."""

    OBJECT = b"text_completion"
    CHOICE_OPEN = b'"text":'
    CHOICE_REST = b',"index":0,"logprobs":null,"finish_reason":'
    EMPTY = b'""'
    LEAD = 1  # no role event: the first piece alone

    def content(self, piece: str) -> bytes:
        return self._head + _dumps(piece) + self._tail

    def events(self, reply: Reply, usage: dict[str, Any]) -> list[bytes]:
        events = [self.content(p) for p in reply.content]
        return [*events, self.final(reply.finish_reason, usage), DONE]
