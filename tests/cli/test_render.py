"""The terminal views, fed real stream events from the simulator into a real rich console."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from dskit import DeepSeek
from dskit._tokens import count_text
from dskit.cli._pricing import estimate_cost, footer, is_peak
from dskit.cli._render import (
    INTERRUPTED,
    REFRESH_HZ,
    PlainView,
    RichView,
    make_console,
    stable_length,
)
from dskit.client._types import ChatResult, ContentDelta, Done, KeepAlive, Retrying, Usage

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def rich_console(width: int = 80):
    out = io.StringIO()
    console = make_console(out, force_terminal=True)
    console.width = width
    return console, out


@pytest.mark.parametrize(
    ("text", "stable"),
    [
        ("one paragraph, still growing", ""),
        ("done para\n\nnext", "done para\n\n"),
        ("a\n\nb\n\nc", "a\n\nb\n\n"),
        ("intro\n\n```py\nx = 1\n\ny = 2", "intro\n\n"),  # blank line inside a fence
        ("```py\nx = 1\n```\nafter", "```py\nx = 1\n```\n"),
        ("```\ncode\n```", ""),  # the closing fence line is not finished yet
        ("~~~\na\n\n~~~\n\nz", "~~~\na\n\n~~~\n\n"),
    ],
)
def test_stable_length_never_cuts_inside_a_block(text, stable):
    assert text[: stable_length(text)] == stable


def test_rich_view_renders_markdown_and_footer():
    console, out = rich_console()
    usage = Usage(prompt_tokens=1000, completion_tokens=500, prompt_cache_hit_tokens=640,
                  prompt_cache_miss_tokens=360)  # fmt: skip
    result = ChatResult(content="x", usage=usage, model="deepseek-flash")
    pieces = ["# Title\n\n", "Some **bold** text.\n\n", "```python\n", "print(1)\n", "```\n"]
    with RichView(console, model="deepseek-flash") as view:
        view.handle(KeepAlive())
        assert "queueing" in view.status
        for piece in pieces:
            view.handle(ContentDelta(piece))
        view.handle(Done(result))
        view.finish(result)
    text = ANSI.sub("", out.getvalue())
    assert "Title" in text and "bold" in text and "**bold**" not in text  # rendered, not raw
    assert "print(1)" in text and "```" not in text
    assert "tokens 1000 in (640 cached) / 500 out" in text and "(estimate)" in text


def test_rich_view_status_for_retries_and_resumes():
    console, _ = rich_console()
    view = RichView(console, model="deepseek-flash")
    view.handle(Retrying(attempt=1, delay=2.0, reason="429: Rate Limit Reached"))
    assert view.status == "retrying in 2s (429: Rate Limit Reached)"
    view.handle(ContentDelta("partial"))
    assert view.status == "" and view.started
    from dskit.client._types import Resumed

    view.handle(Resumed(attempt=1, reason="dropped"))
    assert view.status.startswith("resuming the answer")


def test_reasoning_is_dim_above_the_answer_and_can_be_hidden(sim):
    with DeepSeek(api_key="sk-test", base_url=sim.base_url) as client:
        events = list(client.stream("why?", model="deepseek-v4-pro"))
    result = events[-1].result
    for think in (True, False):
        console, out = rich_console(width=200)
        with RichView(console, model="deepseek-v4-pro", think=think) as view:
            for event in events:
                view.handle(event)
            view.finish(result)
        raw = out.getvalue()
        first_thought = " ".join(result.reasoning_content.split()[:6])  # not in the answer
        first_word = result.content.split()[0]
        text = ANSI.sub("", raw)
        assert (first_thought in text) is think
        if think:
            assert text.index(first_thought) < text.index(first_word)
            assert "\x1b[2;3m" in raw or "\x1b[2m" in raw  # dim


def colours_in_render() -> list[str]:
    console, out = rich_console()
    with RichView(console, model="deepseek-flash") as view:
        view.handle(ContentDelta("Some **bold** and `code`.\n\n```python\nx = 1\n```\n"))
        view.finish(ChatResult(usage=Usage(prompt_tokens=1, completion_tokens=1)))
    codes = [c for sgr in re.findall(r"\x1b\[([0-9;]*)m", out.getvalue()) for c in sgr.split(";")]
    return [c for c in codes if c.isdigit() and (30 <= int(c) <= 49 or 90 <= int(c) <= 107)]


def test_no_color_is_respected(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colours_in_render() != []
    monkeypatch.setenv("NO_COLOR", "1")
    assert colours_in_render() == []


def test_interrupted_note_and_plain_view(capsys):
    console, out = rich_console()
    with RichView(console, model="deepseek-flash") as view:
        view.handle(ContentDelta("half an ans"))
        view.finish(None, note=INTERRUPTED)
    text = ANSI.sub("", out.getvalue())
    assert "half an ans" in text and "interrupted" in text
    plain = io.StringIO()
    with PlainView(out=plain) as view:
        view.handle(ContentDelta("no newline"))
        view.finish(None, note=INTERRUPTED)
    assert plain.getvalue() == "no newline\n"
    assert "interrupted" in capsys.readouterr().err


def test_long_answer_render_cost_stays_flat():
    """Finished blocks leave the live area: it never holds more than the growing block."""
    console, _ = rich_console()
    paragraph = "word " * 40 + "\n\n"
    with RichView(console, model="deepseek-flash") as view:
        biggest = 0
        for _ in range(300):
            view.handle(ContentDelta(paragraph))
            view._refresh(force=True)
            biggest = max(biggest, len(view.content))
        view.finish(None)
    assert biggest <= len(paragraph)


OFF_PEAK = datetime(2026, 11, 14, 2, 0, tzinfo=UTC)  # a Saturday
PEAK = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)  # Monday 02:00 UTC, Beijing 10:00


def test_cost_estimate_uses_the_v4_prices_off_peak_and_peak():
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000,
                  prompt_cache_hit_tokens=500_000, prompt_cache_miss_tokens=500_000)  # fmt: skip
    flash = 0.5 * 0.003 + 0.5 * 0.15 + 0.60
    assert estimate_cost(usage, "deepseek-flash", OFF_PEAK) == pytest.approx(flash)
    assert estimate_cost(usage, "deepseek-flash", PEAK) == pytest.approx(2 * flash)
    pro = 0.5 * 0.022 + 0.5 * 0.66 + 1.98
    assert estimate_cost(usage, "deepseek-v4-pro", OFF_PEAK) == pytest.approx(pro)
    # retired names are priced as what they migrate to; unknown models as Flash
    assert estimate_cost(usage, "deepseek-flash", OFF_PEAK) == pytest.approx(flash)
    unsplit = Usage(prompt_tokens=1_000_000)
    assert estimate_cost(unsplit, "some-new-model", OFF_PEAK) == pytest.approx(0.15)
    assert footer(Usage(prompt_tokens=10, completion_tokens=5), "deepseek-flash").startswith(
        "tokens 10 in / 5 out"
    )


@pytest.mark.parametrize(
    ("at", "peak"),
    [
        (datetime(2026, 11, 16, 0, 59, tzinfo=UTC), False),
        (datetime(2026, 11, 16, 1, 0, tzinfo=UTC), True),
        (datetime(2026, 11, 16, 3, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 16, 4, 0, tzinfo=UTC), False),
        (datetime(2026, 11, 16, 6, 0, tzinfo=UTC), True),
        (datetime(2026, 11, 16, 9, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 16, 10, 0, tzinfo=UTC), False),
        (datetime(2026, 11, 20, 7, 0, tzinfo=UTC), True),  # Friday
        (datetime(2026, 11, 21, 7, 0, tzinfo=UTC), False),  # Saturday
        (datetime(2026, 11, 16, 10, 30, tzinfo=timezone(timedelta(hours=8))), True),  # Beijing
    ],
)
def test_peak_hours_follow_deepseeks_calendar(at: datetime, peak: bool) -> None:
    assert is_peak(at) is peak


class CountingRichView(RichView):
    """The real view, counting how often it rebuilds the growing Markdown."""

    rebuilds = 0

    def _renderable(self):  # type: ignore[no-untyped-def]
        self.rebuilds += 1
        return super()._renderable()


def test_rerendering_is_throttled_for_long_answers():
    """6000 tokens in one paragraph (the worst case: nothing can be printed for good).
    Re-parsing the Markdown per token would be quadratic; the view rebuilds at most
    REFRESH_HZ times a second, whatever the token rate."""
    console, out = rich_console()
    started = time.monotonic()
    with CountingRichView(console, model="deepseek-flash") as view:
        for _ in range(6000):
            view.handle(ContentDelta("word "))
        view.finish(None)
    elapsed = time.monotonic() - started
    # rich's own auto-refresh also calls into the view; both are bounded by the rate
    assert view.rebuilds <= 2 * (REFRESH_HZ * elapsed + 2) + 2
    assert view.rebuilds < 6000 / 10  # far fewer rebuilds than tokens
    assert ANSI.sub("", out.getvalue()).count("word") >= 6000  # all of it, in the end


def test_a_reply_without_usage_gets_an_estimated_footer():
    console = make_console(io.StringIO(), force_terminal=False)
    with RichView(console, model="deepseek-flash") as view:
        view.handle(ContentDelta("hello " * 10))
        view.finish(ChatResult(content="hello " * 10, reasoning_content="hmm"), note=INTERRUPTED)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    estimate = count_text("hello " * 10) + count_text("hmm")  # the tokenizer's count
    assert out.index("[interrupted") < out.index(f"tokens ~{estimate} out (estimated: the usage")
    empty = make_console(io.StringIO(), force_terminal=False)
    with RichView(empty, model="deepseek-flash") as view:
        view.finish(ChatResult(content=""), note=INTERRUPTED)
    assert "tokens" not in empty.file.getvalue()  # type: ignore[attr-defined]


def test_the_rich_view_imports_what_finish_needs_before_the_first_token():
    """A Ctrl-C that lands inside a first import leaves the module half-built; the
    interrupted answer must still render, so the view imports its Markdown up front."""
    import subprocess
    import sys

    code = (
        "import io, sys\n"
        "from dskit.cli._render import RichView, make_console\n"
        "assert 'rich.markdown' not in sys.modules\n"
        "with RichView(make_console(io.StringIO(), force_terminal=True), model='m'):\n"
        "    print('rich.markdown' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
