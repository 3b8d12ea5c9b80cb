"""Logprobs on deepseek-flash: deterministic, one entry per streamed token, the same
whole and streamed; other models ignore the request."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest

from tests.sim.sim_helpers import AUTH

BODY = {
    "model": "deepseek-flash", "thinking": {"type": "disabled"}, "logprobs": True,
    "top_logprobs": 3, "messages": [{"role": "user", "content": "logprobs please"}],
}  # fmt: skip


def _stream(http: httpx2.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = http.post("/chat/completions", json={**body, "stream": True}).text
    return [orjson.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]


def test_whole_and_streamed_logprobs_agree_and_are_deterministic(sim: Any) -> None:
    with httpx2.Client(base_url=sim.base_url, headers=AUTH) as http:
        whole = http.post("/chat/completions", json=BODY).json()["choices"][0]
        again = http.post("/chat/completions", json=BODY).json()["choices"][0]
        chunks = _stream(http, BODY)
    entries = whole["logprobs"]["content"]
    assert entries == again["logprobs"]["content"]  # the same request, the same numbers
    assert "".join(e["token"] for e in entries) == whole["message"]["content"]
    for entry in entries:
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == entry["token"]
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
    streamed = [
        e for c in chunks if c["choices"] and c["choices"][0].get("logprobs")
        for e in c["choices"][0]["logprobs"]["content"]
    ]  # fmt: skip
    assert streamed == entries


@pytest.mark.parametrize("change", [{"logprobs": False}, {"model": "deepseek-v4-pro"}])
def test_no_logprobs_unless_asked_on_flash(sim: Any, change: dict[str, Any]) -> None:
    with httpx2.Client(base_url=sim.base_url, headers=AUTH) as http:
        whole = http.post("/chat/completions", json={**BODY, **change}).json()["choices"][0]
        chunks = _stream(http, {**BODY, **change})
    assert whole["logprobs"] is None
    assert all(c["choices"][0]["logprobs"] is None for c in chunks if c["choices"])


def test_the_client_and_the_openai_sdk_read_them(sim: Any) -> None:
    import openai

    client = openai.OpenAI(api_key="sk-test", base_url=sim.base_url)
    reply = client.chat.completions.create(
        model="deepseek-flash", messages=BODY["messages"], logprobs=True, top_logprobs=2,
        extra_body={"thinking": {"type": "disabled"}},
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 2
    from dskit import DeepSeek

    with DeepSeek(api_key="sk-test", base_url=sim.base_url) as ours:
        result = ours.chat(BODY["messages"], thinking=False, logprobs=True, top_logprobs=2)
    assert [e["token"] for e in result.logprobs["content"]] == [c.token for c in content]
