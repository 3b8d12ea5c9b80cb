"""The shared token estimate (`dskit._tokens`): what sessions budget and the sim reports."""

from __future__ import annotations

from dskit._tokens import estimate_message_tokens, estimate_tokens, message_text


def test_cjk_counts_double_ascii() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcdefghij") == 3  # 10 x 0.3
    assert estimate_tokens("河流河流河") == 3  # 5 x 0.6
    assert estimate_tokens("a") == 1  # rounded up: never zero for a non-empty text


def test_list_content_is_counted_by_its_text_not_its_repr() -> None:
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]
    message = {"role": "user", "content": parts}
    assert message_text(message) == "hello world"
    assert estimate_message_tokens(message) == estimate_message_tokens(
        {"role": "user", "content": "hello world"}
    )


def test_tool_calls_count_with_their_name_and_arguments() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    assert message_text(message) == 'f{"x":1}'
