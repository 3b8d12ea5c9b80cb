"""Packed questions: a JSON-mode request listing numbered questions gets one answer per
question in the requested shape, each what the question gets asked alone; the
X-Sim-Pack-Fault misbehaviours; requests that are not packs are answered as before."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from dskit._tokens import count_prompt, count_text
from dskit.client._batch_pack import pack_messages, split_answers
from dskit.sim import SimConfig
from tests.sim.sim_helpers import joined, sse_chunks

SYSTEM = "You classify support tickets as billing, bug or other. Say only the label."
QUESTIONS = ["I was charged twice", "the app crashes on start", "where is my order?"]
JSON_MODE = {"type": "json_object"}


def body(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "model": "deepseek-flash",
        "thinking": {"type": "disabled"},
        "messages": messages,
        **extra,
    }


def two(system: str, user: str, **extra: Any) -> dict[str, Any]:
    """A body with a system prompt and one user message."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return body(messages, **extra)


def post(client: httpx2.Client, data: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/chat/completions", json=data, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def content(client: httpx2.Client, data: dict[str, Any], **headers: str) -> str:
    text: str = post(client, data, **headers)["choices"][0]["message"]["content"]
    return text


def alone(client: httpx2.Client, question: str, system: str | None = SYSTEM) -> str:
    if system is None:
        return content(client, body([{"role": "user", "content": question}]))
    return content(client, two(system, question))


def packed(system: str | None = SYSTEM, questions: list[str] = QUESTIONS, **extra: Any) -> Any:
    return body(pack_messages(questions, system), response_format=JSON_MODE, **extra)


def test_dskits_pack_gets_each_answer_it_would_get_alone(client: httpx2.Client) -> None:
    answer = post(client, packed())
    text = answer["choices"][0]["message"]["content"]
    assert [e["i"] for e in json.loads(text)["answers"]] == [0, 1, 2]
    assert split_answers(text, 3) == [alone(client, q) for q in QUESTIONS]
    usage = answer["usage"]
    assert usage["prompt_tokens"] == count_prompt(pack_messages(QUESTIONS, SYSTEM), thinking=False)
    assert usage["completion_tokens"] == count_text(text)  # the JSON's real tokens


def test_without_a_system_prompt_the_answers_are_those_of_the_bare_question(
    client: httpx2.Client,
) -> None:
    text = content(client, packed(system=None))
    assert split_answers(text, 3) == [alone(client, q, system=None) for q in QUESTIONS]


def test_with_thinking_each_question_is_thought_about_as_alone(client: httpx2.Client) -> None:
    thinking = {"thinking": {"type": "enabled"}, "reasoning_effort": "low"}
    message = post(client, {**packed(), **thinking})["choices"][0]["message"]
    singles = [post(client, two(SYSTEM, q, **thinking)) for q in QUESTIONS]
    reasons = [s["choices"][0]["message"]["reasoning_content"] for s in singles]
    assert message["reasoning_content"] == "\n\n".join(reasons)
    answers = [s["choices"][0]["message"]["content"] for s in singles]
    assert split_answers(message["content"], 3) == answers


def test_streamed_pack_is_the_whole_pack(client: httpx2.Client) -> None:
    whole = content(client, packed())
    raw = client.post("/chat/completions", json={**packed(), "stream": True}).content
    chunks = sse_chunks(raw)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    pieces = [p for p in pieces if p]
    assert joined(chunks) == whole and len(pieces) == count_text(whole)  # a token a chunk


def test_chinese_questions_get_their_chinese_answers(client: httpx2.Client) -> None:
    questions = ["我的账单有问题吗", "应用一打开就崩溃了"]
    text = content(client, packed(questions=questions))
    answers = split_answers(text, 2)
    assert answers == [alone(client, q) for q in questions]


# ---- other ways of asking ------------------------------------------------------------


def test_a_numbered_text_list_with_a_template_in_the_user_message(client: httpx2.Client) -> None:
    user = (
        "Answer these questions, each on its own:\n"
        "1. I was charged twice\n2. the app crashes\n   on start\n3) where is my order?\n"
        'Reply with a json array only: [{"n": 1, "text": "..."}, ...]'
    )
    text = content(client, two(SYSTEM, user, response_format=JSON_MODE))
    entries = json.loads(text)
    asked = ["I was charged twice", "the app crashes\non start", "where is my order?"]
    assert [e["n"] for e in entries] == [1, 2, 3]
    assert [e["text"] for e in entries] == [alone(client, q) for q in asked]


def test_a_json_list_of_strings_and_a_template_in_its_own_paragraph(
    client: httpx2.Client,
) -> None:
    system = f'{SYSTEM}\n\nGive the answers as json: {{"results": ["...", ...]}}.'
    user = json.dumps(QUESTIONS)
    text = content(client, two(system, user, response_format=JSON_MODE))
    assert json.loads(text) == {"results": [alone(client, q) for q in QUESTIONS]}


def test_without_a_template_the_answers_come_as_a_list(client: httpx2.Client) -> None:
    system = f"{SYSTEM}\n\nAnswer each question below; reply in JSON."
    user = "\n".join(f"{n}. {q}" for n, q in enumerate(QUESTIONS, start=1))
    text = content(client, two(system, user, response_format=JSON_MODE))
    assert json.loads(text) == {"answers": [alone(client, q) for q in QUESTIONS]}


@pytest.mark.parametrize(
    "data",
    [
        body(pack_messages(QUESTIONS, SYSTEM)),  # not JSON mode: plain text
        two("Reply in json.", "Is 7 prime?", response_format=JSON_MODE),
        two("Reply in json.", "1. apples\n2. pears", response_format=JSON_MODE),  # no answers
    ],
)
def test_requests_that_are_not_packs_are_answered_as_before(
    sim_factory: Any, data: dict[str, Any]
) -> None:
    sim = sim_factory()
    with httpx2.Client(base_url=sim.base_url, headers={"Authorization": "Bearer k"}) as http:
        text = content(http, data)
    assert split_answers(text, 3) is None
    assert sim.stats.packed_requests == 0 and sim.stats.requests == 1


# ---- misbehaving on purpose ----------------------------------------------------------


def numbers(text: str) -> list[int]:
    return [entry["i"] for entry in json.loads(text)["answers"]]


def test_pack_faults_break_the_reply_as_named(client: httpx2.Client) -> None:
    def faulty(kind: str) -> str:
        return content(client, packed(), **{"X-Sim-Pack-Fault": kind})

    good = content(client, packed())
    dropped, duplicated, reversed_, ignored = map(
        faulty, ("drop", "duplicate", "reverse", "ignore")
    )
    assert numbers(dropped) == [0, 2] and split_answers(dropped, 3) is None
    assert numbers(duplicated) == [0, 1, 0] and split_answers(duplicated, 3) is None
    assert numbers(reversed_) == [2, 1, 0] and split_answers(reversed_, 3) == split_answers(good, 3)
    assert "answers" not in json.loads(ignored) and split_answers(ignored, 3) is None


def test_the_config_makes_every_pack_misbehave_unless_a_header_says(sim_factory: Any) -> None:
    sim = sim_factory(pack_fault="drop")
    with httpx2.Client(base_url=sim.base_url, headers={"Authorization": "Bearer k"}) as http:
        assert split_answers(content(http, packed()), 3) is None
        fixed = content(http, packed(), **{"X-Sim-Pack-Fault": "reverse"})
    assert split_answers(fixed, 3) is not None
    assert sim.stats.packed_requests == 2


def test_a_bad_pack_fault_is_refused(client: httpx2.Client) -> None:
    response = client.post("/chat/completions", json=packed(), headers={"X-Sim-Pack-Fault": "x"})
    assert response.status_code == 400 and "x-sim-pack-fault" in response.text
    with pytest.raises(ValueError, match="pack_fault"):
        SimConfig(pack_fault="sometimes")


def test_max_tokens_cuts_the_packed_json(client: httpx2.Client) -> None:
    answer = post(client, packed(max_tokens=10))
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 10
    assert split_answers(answer["choices"][0]["message"]["content"], 3) is None
