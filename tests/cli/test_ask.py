"""`dskit ask` against the simulator: pipes, plain text, --json, --jsonl, every exit code.

Faults come from the simulator's X-Sim-* request headers, passed with the hidden
`--header NAME:VALUE` option (X-Sim-Retry-After: 0 keeps retries instant).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import free_port

NO_WAIT = ["--header", "X-Sim-Retry-After:0"]


def test_plain_text_answer_is_exactly_the_stored_answer(cli, home, on_sim):
    result = cli("ask", *on_sim, "What", "is", "a", "KV", "cache?")
    assert result.exit_code == 0, result.stderr
    [record] = home.sessions()
    question, answer = record.messages
    assert question.content == "What is a KV cache?"
    assert answer.role == "assistant" and not answer.incomplete and answer.content
    assert result.stdout == answer.content + "\n"  # plain: no markup, no footer
    assert "\x1b[" not in result.stdout and "simulator" not in result.stderr


def test_piped_stdin_is_appended_as_context(cli, home, on_sim):
    result = cli("ask", *on_sim, "summarise", input="line one\nline two\n")
    assert result.exit_code == 0, result.stderr
    [record] = home.sessions()
    assert record.messages[0].content == "summarise\n\nline one\nline two"
    assert record.title == "summarise"


def test_stdin_alone_is_the_question(cli, home, on_sim):
    assert cli("ask", *on_sim, input="just this\n").exit_code == 0
    assert home.sessions()[0].messages[0].content == "just this"


def test_json_prints_the_final_result(cli, home, on_sim):
    result = cli("ask", *on_sim, "--json", "--system", "be terse", "hi")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    [record] = home.sessions()
    assert data["content"] == record.messages[1].content
    assert data["finish_reason"] == "stop" and data["incomplete"] is False
    assert data["model"] == "deepseek-flash"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert record.system == "be terse"


def test_jsonl_prints_every_event_then_done(cli, on_sim):
    result = cli("ask", *on_sim, "--jsonl", "think first")  # thinking: DeepSeek's default
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done" and "reasoning" in kinds and "content" in kinds
    assert kinds.index("reasoning") < kinds.index("content")
    final = events[-1]["result"]
    assert "".join(e["text"] for e in events if e["type"] == "content") == final["content"]
    reasoning = "".join(e["text"] for e in events if e["type"] == "reasoning")
    assert reasoning == final["reasoning_content"]


def test_json_and_jsonl_together_is_a_usage_error(cli):
    result = cli("ask", "--json", "--jsonl", "hi")
    assert result.exit_code == 2 and "cannot be used together" in result.stderr


def test_nothing_to_ask_is_a_usage_error(cli):
    result = cli("ask")
    assert result.exit_code == 2 and "nothing to ask" in result.stderr


def test_bad_option_value_is_a_usage_error(cli):
    assert cli("ask", "-t", "5", "hi").exit_code == 2


def test_no_key_runs_on_the_builtin_simulator_and_says_so(cli, home):
    result = cli("ask", "--no-save", "--sim-token-ms", "0", "hello")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()
    assert result.stderr.count("No DEEPSEEK_API_KEY set") == 1
    assert "offline simulator" in result.stderr
    assert home.sessions() == []  # --no-save


@pytest.mark.parametrize(("status", "code"), [(401, 3), (402, 3), (429, 4), (500, 5), (503, 5)])
def test_error_statuses_map_to_exit_codes(cli, on_sim, status, code):
    args = ["--max-retries", "1", *NO_WAIT, "--header", f"X-Sim-Status:{status}"]
    result = cli("ask", *on_sim, *args, "hi")
    assert result.exit_code == code, result.stderr
    assert result.stdout == "" and result.stderr.splitlines()[-1].startswith("Error:")
    assert "sk-test-0123456789abcdef" not in result.stderr
    if status in (429, 500, 503):  # retried first, and said so
        assert "retrying in 0.0s" in result.stderr


def test_bad_request_is_exit_1(cli, on_sim):
    result = cli("ask", *on_sim, "--header", "X-Sim-Status:400", "hi")
    assert result.exit_code == 1 and "400" in result.stderr


def test_unreachable_server_is_exit_5(cli, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test")
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("ask", "--base-url", url, "--max-retries", "0", "hi")
    assert result.exit_code == 5 and "Error:" in result.stderr


def test_timeout_is_exit_5(cli, on_sim):
    args = ["--timeout", "0.3", "--max-retries", "0", "--header", "X-Sim-TTFT-Ms:5000"]
    result = cli("ask", *on_sim, *args, "hi")
    assert result.exit_code == 5, result.stderr


def test_incomplete_answer_is_exit_6_and_keeps_what_arrived(cli, home, on_sim):
    args = ["--no-think", "--header", "X-Sim-End-After-Events:4", *NO_WAIT]
    result = cli("ask", *on_sim, *args, "tell me a story")
    assert result.exit_code == 6, result.stderr
    assert "Incomplete answer" in result.stderr
    [record] = home.sessions()
    answer = record.messages[-1]
    assert answer.incomplete and answer.content
    assert result.stdout.startswith(answer.content)  # what arrived was printed


def test_incomplete_json_is_marked(cli, on_sim):
    args = ["--json", "--no-think", "--header", "X-Sim-End-After-Events:4", *NO_WAIT]
    result = cli("ask", *on_sim, *args, "tell me a story")
    assert result.exit_code == 6
    data = json.loads(result.stdout)
    assert data["incomplete"] is True and data["content"] and data["error"]


def test_answer_cut_at_max_tokens_is_exit_6(cli, home, on_sim):
    result = cli("ask", *on_sim, "--no-think", "--max-tokens", "3", "tell me a story")
    assert result.exit_code == 6
    assert "reached max_tokens" in result.stderr
    [record] = home.sessions()
    assert record.messages[-1].content + "\n" == result.stdout
    # the cap is this run's: a later `chat -c` is not capped (thinking off is kept)
    assert record.params == {"thinking": False}
    again = ["--json", "--no-think", "--max-tokens", "3", "again"]
    as_json = json.loads(cli("ask", *on_sim, *again).stdout)
    assert as_json["finish_reason"] == "length" and as_json["incomplete"] is True


def test_help_documents_exit_codes_and_examples(cli):
    text = cli("ask", "--help").output
    for needle in ("Exit codes", "3  authentication", "4  rate limited", "6  incomplete"):
        assert needle in text
    assert "cat notes.md | dskit ask" in text


def test_base_url_without_a_key_talks_to_that_server(cli, sim):
    result = cli("ask", "--base-url", sim.base_url, "--no-save", "hi")
    assert result.exit_code == 0 and result.stdout.strip()
    assert "simulator" not in result.stderr  # no in-process simulator was started


def test_deepseek_without_a_key_is_a_config_error(cli):
    result = cli("ask", "--base-url", "https://api.deepseek.com", "hi")
    assert result.exit_code == 2 and "Error:" in result.stderr


def _dskit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`dskit ARGS` in a process of its own: logging as a user gets it (pytest's own log
    capture is not there to hide what the library prints)."""
    command = [sys.executable, "-c", "from dskit.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def sim_env(sim, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    env.update(DSKIT_HOME=str(home.root), DSKIT_CONFIG=str(home.config))
    env.update(DEEPSEEK_API_KEY="sk-test-0123456789abcdef", DEEPSEEK_BASE_URL=sim.base_url)
    return env


def test_each_retry_is_reported_once_by_the_cli_not_by_library_logging(sim_env):
    args = ["--max-retries", "2", *NO_WAIT, "--header", "X-Sim-Status:503"]
    result = _dskit("ask", *args, "hi", env=sim_env)
    assert result.returncode == 5, result.stderr
    assert result.stderr.count("retrying in") == 2  # the CLI's own line, once per retry
    assert "retry 1 in" not in result.stderr  # the library's log stays the application's


def test_debug_shows_the_librarys_log_and_the_traceback(sim_env):
    args = ["--max-retries", "1", *NO_WAIT, "--header", "X-Sim-Status:503"]
    result = _dskit("--debug", "ask", *args, "hi", env=sim_env)
    assert result.returncode == 5
    assert "retry 1 in" in result.stderr and "Traceback" in result.stderr
    assert "sk-test-0123456789abcdef" not in result.stderr


def test_json_mode_prints_an_error_object_too(cli, on_sim):
    result = cli("ask", *on_sim, "--json", "--header", "X-Sim-Status:400", "hi")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["error"]["type"] == "BadRequestError" and data["error"]["message"]
    assert data["exit_code"] == 1 and result.stderr.startswith("Error:")


def test_a_server_that_wants_a_key_says_so_without_naming_a_placeholder(cli, sim):
    args = ["--base-url", sim.base_url, "--header", "X-Sim-Status:401", "--max-retries", "0"]
    result = cli("ask", *args, "hi")
    assert result.exit_code == 3
    assert "wants an API key" in result.stderr and "DEEPSEEK_API_KEY" in result.stderr
    assert "sk-none" not in result.stderr and "****none" not in result.stderr
