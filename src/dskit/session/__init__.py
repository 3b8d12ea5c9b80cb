"""Conversations that remember: `ChatSession`, `AsyncChatSession` and `@tool`.

A session keeps the history (in a `dskit.store` store), fits it into the model's context
window (`ContextPolicy`: window, summarize or error; `memory=True` keeps what
dropped turns named), runs the tools the model calls and
saves every message, a streamed answer as it grows. See docs/sessions.md.
"""

from dskit.session._async import AsyncChatSession, AsyncSessionStream
from dskit.session._context import DEFAULT_WINDOWS, ContextPolicy, TokenCounter
from dskit.session._memory import EntityMemory
from dskit.session._sync import ChatSession, SessionStream
from dskit.session._tools import Tool, tool

__all__ = [
    "DEFAULT_WINDOWS",
    "AsyncChatSession",
    "AsyncSessionStream",
    "ChatSession",
    "ContextPolicy",
    "EntityMemory",
    "SessionStream",
    "TokenCounter",
    "Tool",
    "tool",
]
