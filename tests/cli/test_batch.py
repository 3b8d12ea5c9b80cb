"""`dskit batch`: one output line per input line, in order; errors per line; resume from
the journal (also after a real SIGKILL); --pack against a server that follows the
requested shape and against a simulator told not to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_batch import PackingServer
from tests.conftest import LocalHTTPServer, wait_until

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [f"ticket {i}: my invoice is wrong" for i in range(10)]


def _write(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def own_sim(sim_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A simulator of this test's own (its request count is this test's), with a key."""
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test-0123456789abcdef")
    return sim_factory()


def test_every_line_answered_in_order_with_errors_per_line(cli, tmp_path, on_sim):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '"plain question"\n'
        '{"id": "t-7", "question": "a ticket"}\n'
        "{not json\n"
        '{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}\n'
        '{"messages": [{"role": "user", "content": "hello"}], "thinking": false}\n'
    )
    out = tmp_path / "out.jsonl"
    result = cli("batch", *on_sim, str(source), "-o", str(out))
    assert result.exit_code == 1, result.stderr  # some line failed
    lines = _read(out)
    assert [line["index"] for line in lines] == [0, 1, 2, 3, 4]
    assert [line["error"] is None for line in lines] == [True, True, False, False, True]
    assert lines[1]["id"] == "t-7" and lines[1]["content"]
    assert (
        lines[2]["error"]["type"] == "ValidationError"
        and "not JSON" in lines[2]["error"]["message"]
    )
    assert "temperature" in lines[3]["error"]["message"]
    assert lines[0]["usage"]["completion_tokens"] > 0
    assert "5/5 done, 2 failed" in result.stderr and "(estimate)" in result.stderr
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_all_answered_exits_0_and_a_rerun_asks_nothing(cli, tmp_path, own_sim):
    source, out = _write(tmp_path / "in.jsonl", QUESTIONS), tmp_path / "out.jsonl"
    args = ("batch", "--base-url", own_sim.base_url, str(source), "-o", str(out))
    assert cli(*args).exit_code == 0
    first = out.read_text()
    assert own_sim.stats.requests == len(QUESTIONS)
    assert cli(*args).exit_code == 0
    assert out.read_text() == first and own_sim.stats.requests == len(QUESTIONS)


def test_a_rerun_asks_only_what_has_no_answer(cli, tmp_path, own_sim):
    """A journal of a run cut short (three answers and a torn line): the rerun asks the
    other seven, and the output is what one whole run gives."""
    source, out = _write(tmp_path / "in.jsonl", QUESTIONS), tmp_path / "out.jsonl"
    args = ("batch", "--base-url", own_sim.base_url, str(source), "-o", str(out))
    assert cli(*args).exit_code == 0
    whole = _read(out)
    journal = tmp_path / "out.jsonl.partial"
    kept = [whole[7], whole[2], whole[4]]  # completion order, not input order
    prints = [_print(QUESTIONS[line["index"]]) for line in kept]
    journal.write_text(
        "".join(
            json.dumps({**line, "input": p}) + "\n" for line, p in zip(kept, prints, strict=True)
        )
        + '{"index": 5, "content": "torn'
    )
    out.unlink()
    own_sim.reset_stats()
    assert cli(*args).exit_code == 0
    assert own_sim.stats.requests == 7
    # what one whole run gives (the seven asked again hit the context cache this time)
    assert _without_cache_counts(_read(out)) == _without_cache_counts(whole)


def _without_cache_counts(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cache = ("prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "prompt_tokens_details")
    return [
        {**line, "usage": {k: v for k, v in (line.get("usage") or {}).items() if k not in cache}}
        for line in lines
    ]


def _print(question: str) -> str:
    from dskit.cli._batch_files import fingerprint

    return fingerprint(json.dumps(question))


def test_a_journal_entry_for_a_changed_line_is_not_trusted(cli, tmp_path, own_sim):
    source, out = _write(tmp_path / "in.jsonl", QUESTIONS[:3]), tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.partial"
    entry = {"index": 0, "content": "stale", "error": None, "input": _print("another question")}
    journal.write_text(json.dumps(entry) + "\n")
    assert cli("batch", "--base-url", own_sim.base_url, str(source), "-o", str(out)).exit_code == 0
    assert own_sim.stats.requests == 3 and _read(out)[0]["content"] != "stale"


def test_failed_lines_are_asked_again_on_the_next_run(cli, tmp_path, own_sim):
    once = {"X-Sim-Status": "503", "X-Sim-Retry-After": "0", "X-Sim-Fault-Key": f"f{os.getpid()}"}
    items: list[Any] = [*QUESTIONS[:3], {"question": "flaky", "extra_headers": once}]
    source, out = _write(tmp_path / "in.jsonl", items), tmp_path / "out.jsonl"
    args = (
        "batch",
        "--base-url",
        own_sim.base_url,
        "--max-retries",
        "0",
        str(source),
        "-o",
        str(out),
    )
    first = cli(*args)
    assert first.exit_code == 1 and _read(out)[3]["error"]["type"] == "ServiceUnavailableError"
    own_sim.reset_stats()
    assert cli(*args).exit_code == 0
    assert own_sim.stats.requests == 1 and _read(out)[3]["content"]


def test_sigkill_mid_run_then_resume_loses_and_repeats_nothing(tmp_path, own_sim):
    """A real process, killed with SIGKILL once some answers are journalled: every
    journalled line is whole, the rerun asks exactly the lines not journalled, and the
    output has each line once."""
    questions = [f"slow question {i}" for i in range(40)]
    source, out = _write(tmp_path / "in.jsonl", questions), tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.partial"
    command, env = _batch_process(own_sim, source, out, concurrency=4)
    slow = ["--sim-token-ms", "4"]
    process = subprocess.Popen(command[:4] + slow + command[4:], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _journalled(journal, process) >= 8, timeout=60)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL and not out.exists()
    data = journal.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].splitlines()
    kept = {json.loads(line)["index"] for line in complete}
    assert len(kept) == len(complete) < len(questions)  # no line twice, some left
    own_sim.reset_stats()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert own_sim.stats.requests == len(questions) - len(kept)
    lines = _read(out)
    assert [line["index"] for line in lines] == list(range(len(questions)))
    assert all(line["content"] and line["error"] is None for line in lines)
    assert not journal.exists()


def test_ctrl_c_stops_at_once_keeps_every_finished_answer_and_a_rerun_finishes(tmp_path, own_sim):
    """A real `dskit batch` sent SIGINT once four answers are journalled while three more
    stall for a minute: it exits 130 within seconds, without a traceback, the journal
    holds each finished answer once, and the rerun asks only the three."""
    tag = f"stall-{os.getpid()}-{time.monotonic_ns()}"
    stall = {"X-Sim-Stall-After-Events": "1", "X-Sim-Stall-Ms": "60000"}  # first run only
    items: list[Any] = [*QUESTIONS[:4]]
    items += [
        {"question": q, "extra_headers": {**stall, "X-Sim-Fault-Key": f"{tag}-{i}"}}
        for i, q in enumerate(QUESTIONS[4:7])
    ]
    source, out = _write(tmp_path / "in.jsonl", items), tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.partial"
    command, env = _batch_process(own_sim, source, out, concurrency=7)
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        try:
            wait_until(lambda: _journalled(journal, process) >= 4, timeout=60)
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=10)  # the stalls have ~60 s to go
            took = time.monotonic() - sent
        finally:
            process.kill()
    assert process.returncode == 130 and took < 10, stderr
    assert "Traceback" not in stderr and "interrupted: 4/7 done" in stderr
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(entry["index"] for entry in entries) == [0, 1, 2, 3]  # each once
    assert all(entry["content"] and entry["error"] is None for entry in entries)
    own_sim.reset_stats()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert own_sim.stats.requests == 3
    lines = _read(out)
    assert [line["index"] for line in lines] == list(range(7))
    assert all(line["content"] and line["error"] is None for line in lines)


def _batch_process(
    sim: Any, source: Path, out: Path, *, concurrency: int
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a real `dskit batch` process against `sim`,
    with a fixed concurrency."""
    command = [sys.executable, "-c", "from dskit.cli import main; main()", "batch",
               "--base-url", sim.base_url, "--concurrency-start", str(concurrency),
               "--concurrency-max", str(concurrency), str(source), "-o", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
           "DEEPSEEK_API_KEY": "sk-test-0123456789abcdef"}  # fmt: skip
    return command, env


def _journalled(journal: Path, process: subprocess.Popen[Any]) -> int:
    assert process.poll() is None, "the batch ended before it was killed"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def test_pack_against_the_simulator_packs_and_measures_the_saving(cli, tmp_path, own_sim):
    system = "Classify each ticket as billing, bug or other; say only the label. " * 5
    source = _write(tmp_path / "in.jsonl", QUESTIONS)
    common = ("batch", "--base-url", own_sim.base_url, "-s", system, "--no-think", str(source))
    assert cli(*common, "-o", str(tmp_path / "alone.jsonl")).exit_code == 0
    own_sim.reset_stats()
    result = cli(*common, "--pack", "5", "-o", str(tmp_path / "packed.jsonl"))
    assert result.exit_code == 0, result.stderr
    alone, packed = _read(tmp_path / "alone.jsonl"), _read(tmp_path / "packed.jsonl")
    assert [line["packed"] for line in packed] == [5] * 10
    assert [line["content"] for line in packed] == [line["content"] for line in alone]
    assert own_sim.stats.requests == own_sim.stats.packed_requests == 2
    measured = sum(line["usage"]["prompt_tokens"] for line in alone) - sum(
        line["usage"]["prompt_tokens"] for line in packed
    )
    saved = sum(line["prompt_tokens_saved"] for line in packed)
    assert saved == measured > 0 and f"10 packed, ~{saved} prompt tokens saved" in result.stderr


def test_packs_the_simulator_does_not_follow_fall_back_to_single_requests(
    cli, tmp_path, sim_factory, monkeypatch
):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test-0123456789abcdef")
    own_sim = sim_factory(pack_fault="ignore")
    source, out = _write(tmp_path / "in.jsonl", QUESTIONS), tmp_path / "out.jsonl"
    args = ("batch", "--base-url", own_sim.base_url, "--pack", "5", str(source), "-o", str(out))
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    lines = _read(out)
    assert all(line["content"] and line["packed"] == 0 for line in lines)
    assert own_sim.stats.requests == 2 + 10  # two packs that did not verify, then singles
    assert "packed" not in result.stderr


def test_pack_against_a_server_that_follows_the_shape(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test-0123456789abcdef")
    PackingServer.bodies = []
    server = LocalHTTPServer(PackingServer)
    try:
        source, out = _write(tmp_path / "in.jsonl", QUESTIONS), tmp_path / "out.jsonl"
        system = "Classify each ticket as billing, bug or other; say only the label. " * 5
        url = f"http://127.0.0.1:{server.port}"
        result = cli(
            "batch", "--base-url", url, "-s", system, "--pack", "5", str(source), "-o", str(out)
        )
    finally:
        server.close()
    assert result.exit_code == 0, result.stderr
    lines = _read(out)
    assert [line["content"] for line in lines] == [
        f"A{i % 5}: {q}" for i, q in enumerate(QUESTIONS)
    ]
    assert len(PackingServer.bodies) == 2
    saved = sum(line["prompt_tokens_saved"] for line in lines)
    assert saved > 0 and f"10 packed, ~{saved} prompt tokens saved" in result.stderr
