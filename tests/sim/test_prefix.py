"""Chat Prefix Completion continues exactly the reply the simulator would have given."""

from __future__ import annotations

from typing import Any

import httpx2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dskit.sim._request import REASONING_PREFIX
from tests.sim.sim_helpers import AUTH, joined, sse_chunks

HYPO = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CONVERSATIONS = [
    [{"role": "user", "content": "Tell me a story about rivers"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "写一首关于山的诗"},
    ],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "and now a longer answer please"},
    ],
]


def pieces_and_text(client: httpx2.Client, body: dict[str, Any]) -> tuple[list[str], str, Any]:
    chunks = sse_chunks(client.post("/chat/completions", json={**body, "stream": True}).content)
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    return pieces, "".join(pieces), chunks[-1]


def continue_from(client: httpx2.Client, body: dict[str, Any], prefix: dict[str, Any]) -> Any:
    messages = [*body["messages"], {"role": "assistant", "prefix": True, **prefix}]
    response = client.post("/beta/chat/completions", json={**body, "messages": messages})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


@HYPO
@given(conversation=st.sampled_from(CONVERSATIONS), data=st.data())
def test_prefix_at_piece_boundaries(client: httpx2.Client, conversation: Any, data: Any) -> None:
    body = {"model": "deepseek-flash", "thinking": {"type": "disabled"}, "messages": conversation}
    pieces, reply, _ = pieces_and_text(client, body)
    cut = data.draw(st.integers(0, len(pieces)))
    prefix = "".join(pieces[:cut])
    choice = continue_from(client, body, {"content": prefix})
    assert prefix + choice["message"]["content"] == reply
    assert choice["finish_reason"] == "stop"


@HYPO
@given(conversation=st.sampled_from(CONVERSATIONS), data=st.data())
def test_prefix_at_any_character(client: httpx2.Client, conversation: Any, data: Any) -> None:
    body = {"model": "deepseek-flash", "thinking": {"type": "disabled"}, "messages": conversation}
    _, reply, _ = pieces_and_text(client, body)
    cut = data.draw(st.integers(0, len(reply)))
    choice = continue_from(client, body, {"content": reply[:cut]})
    assert reply[:cut] + choice["message"]["content"] == reply


def test_stream_continuation_counts_only_new_pieces(client: httpx2.Client) -> None:
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": CONVERSATIONS[0],
    }
    pieces, reply, last = pieces_and_text(client, body)
    prefix = "".join(pieces[:7]) + pieces[7][:2]  # cut inside a piece
    messages = [*body["messages"], {"role": "assistant", "content": prefix, "prefix": True}]
    stream = {**body, "messages": messages, "stream": True}
    chunks = sse_chunks(client.post("/beta/chat/completions", json=stream).content)
    assert prefix + joined(chunks) == reply
    assert chunks[-1]["usage"]["completion_tokens"] == len(pieces) - 7
    limited = client.post("/beta/chat/completions", json={**stream, "max_tokens": 3}).content
    limited_chunks = sse_chunks(limited)
    assert len(limited_chunks) == 5
    assert limited_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert reply.startswith(prefix + joined(limited_chunks))
    assert last["usage"]["completion_tokens"] == len(pieces)


def test_stop_applies_as_for_the_whole_reply(client: httpx2.Client) -> None:
    base = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": CONVERSATIONS[2],
    }
    _, reply, _ = pieces_and_text(client, base)
    word = reply.split()[6]
    body = {**base, "stop": word}
    _, stopped, _ = pieces_and_text(client, body)
    assert stopped == reply[: reply.index(word)]
    choice = continue_from(client, body, {"content": stopped[:10]})
    assert stopped[:10] + choice["message"]["content"] == stopped


def test_unknown_prefix_gets_a_deterministic_continuation(client: httpx2.Client) -> None:
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": CONVERSATIONS[0],
    }
    first = continue_from(client, body, {"content": "Once upon a time"})
    again = continue_from(client, body, {"content": "Once upon a time"})
    other = continue_from(client, body, {"content": "In a galaxy"})
    assert first["message"]["content"] == again["message"]["content"]
    assert first["message"]["content"] != other["message"]["content"]
    assert first["message"]["content"].startswith(" ")


def test_a_reasoning_prefix_is_refused_by_default(client: httpx2.Client) -> None:
    """DeepSeek's docs do not say whether a prefix may carry the thinking so far: the
    simulator takes the strict reading (a 400), the client copes (tests/client)."""
    body = {"model": "deepseek-flash", "messages": CONVERSATIONS[0]}
    messages = [*body["messages"], {"role": "assistant", "content": "", "prefix": True,
                                     "reasoning_content": "Let me think"}]  # fmt: skip
    refused = client.post("/beta/chat/completions", json={**body, "messages": messages})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == REASONING_PREFIX


def test_reasoner_resumes_reasoning_then_content(sim_factory: Any) -> None:
    lenient = sim_factory(reasoning_prefix=True)  # the other reading: thinking continues
    with httpx2.Client(base_url=lenient.base_url, headers=AUTH) as client:
        body = {"model": "deepseek-flash", "messages": CONVERSATIONS[0]}
        whole = client.post("/chat/completions", json=body).json()["choices"][0]["message"]
        thought, answer = whole["reasoning_content"], whole["content"]
        cut = len(thought) // 3
        choice = continue_from(client, body, {"content": "", "reasoning_content": thought[:cut]})
        assert thought[:cut] + choice["message"]["reasoning_content"] == thought
        assert choice["message"]["content"] == answer
        chunks = sse_chunks(
            client.post(
                "/beta/chat/completions",
                json={
                    **body,
                    "stream": True,
                    "messages": [
                        *body["messages"],
                        {"role": "assistant", "content": answer[:20], "prefix": True},
                    ],
                },
            ).content
        )
        assert answer[:20] + joined(chunks) == answer
        assert joined(chunks, "reasoning_content") == ""


def test_prefix_requests_are_counted(sim_factory: Any) -> None:
    sim = sim_factory()
    body = {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": [*CONVERSATIONS[0], {"role": "assistant", "content": "A", "prefix": True}],
    }
    with httpx2.Client(base_url=sim.base_url, headers={"Authorization": "Bearer k"}) as http:
        assert http.post("/beta/chat/completions", json=body).status_code == 200
        http.post("/chat/completions", json={**body, "messages": CONVERSATIONS[0]})
    assert sim.stats.prefix_requests == 1
    assert sim.stats.by_path == {"/beta/chat/completions": 1, "/chat/completions": 1}
