"""`dskit batch`: many independent questions from a JSONL file, answered into another."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dskit._models import DEFAULT_MODEL
from dskit.cli._batch_files import Journal, read_input
from dskit.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    api_options,
    fail,
    invocation,
    open_backend,
    session_params,
)
from dskit.cli._pricing import estimate_cost, format_cost
from dskit.client._batch import BatchError, BatchResult, Concurrency
from dskit.client._batch_pack import MAX_PACK
from dskit.client._errors import DSKitError
from dskit.client._types import Usage
from dskit.config import Settings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

EXIT_INTERRUPTED = 130
BATCH_HELP = """Answer every request of IN (JSON lines) into OUT, one line per input line.

\b
A line of IN is a question string ("What is 2+2?"), {"id": ..., "question": "..."},
or {"messages": [...], ...request parameters}. A line of OUT is
{"index", "id", "content", "finish_reason", "usage", "error", "packed",
"prompt_tokens_saved"}, in input order; a failed line has "error" {"type", "message"}
and does not stop the others.

Requests run concurrently: the number in flight starts at --concurrency-start, grows
by one per few successes up to --concurrency-max, and halves on a 429/503 or when
answers start much later than they did. Finished answers are journalled to OUT.partial
as they arrive, so an interrupted run is resumed by running the same command again
(lines answered already are not asked again; failed ones are).

--pack N asks up to N short questions in one JSON-mode request and splits the answers
back; a pack whose answer does not check out is asked again question by question.

\b
Examples:
  dskit batch tickets.jsonl -o answers.jsonl
  dskit batch tickets.jsonl -o answers.jsonl -s "Classify: billing, bug or other." --pack 10

\b
Exit codes: 0 every line answered; 1 some line failed (OUT still has every line);
2 usage error; 130 interrupted (rerun to resume).
"""


@click.command("batch", help=BATCH_HELP)
@click.argument("input_path", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="OUT.")
@click.option("-s", "--system", help="System prompt for every request.")
@api_options
@click.option("--concurrency-start", type=click.IntRange(1, 512), default=4, show_default=True)
@click.option("--concurrency-max", type=click.IntRange(1, 512), default=16, show_default=True)
@click.option("--pack", type=click.IntRange(2, MAX_PACK), help="Questions per packed request.")
def batch(
    input_path: str,
    output: str,
    concurrency_start: int,
    concurrency_max: int,
    pack: int | None,
    **shared: Any,
) -> None:
    run = invocation(shared)
    lines, items = read_input(Path(input_path))
    journal = Journal(Path(output), lines)
    tally = Tally(len(items), model=run.settings.model or DEFAULT_MODEL)
    for result in journal.answered().values():
        tally.answered[result.index] = result
    controls = Concurrency(start=min(concurrency_start, concurrency_max), maximum=concurrency_max)
    params = _params(run.settings, run.max_tokens)
    try:
        _run(run, journal, items, tally, controls, pack, params)
    except DSKitError as exc:
        raise fail(exc, run.settings) from None
    except KeyboardInterrupt:  # it may land between a result's journal line and its count
        journal.close()
        tally.catch_up(journal.answered())
        click.echo(f"interrupted: {tally.line()}; run again to resume", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    finally:
        journal.close()
    click.echo(tally.line(), err=True)
    raise click.exceptions.Exit(EXIT_OK if tally.failed == 0 else EXIT_ERROR)


def _params(settings: Settings, max_tokens: int | None) -> dict[str, Any]:
    params = session_params(settings)
    if settings.model:
        params["model"] = settings.model
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    return params


def _run(
    run: Any,
    journal: Journal,
    items: list[Any],
    tally: Tally,
    controls: Concurrency,
    pack: int | None,
    params: dict[str, Any],
) -> None:
    todo = [i for i in range(len(items)) if i not in tally.answered]
    unreadable = {i for i in todo if isinstance(items[i], BatchError)}
    asked = [i for i in todo if i not in unreadable]
    journal.open()

    for index in sorted(unreadable):
        tally.add(_journalled(journal, BatchResult(index, error=items[index])))
    with open_backend(run.settings, run.backend) as backend, ProgressBar(tally) as bar:

        def record(result: BatchResult) -> None:
            tally.add(_journalled(journal, _renumber(result, asked[result.index], items)))
            bar.update()

        backend.client.batch(
            [items[i] for i in asked], concurrency=controls, pack=pack,
            system=run.settings.system, on_result=record, **params,
        )  # fmt: skip
    journal.finish(tally.ordered())


def _journalled(journal: Journal, result: BatchResult) -> BatchResult:
    journal.append(result)
    return result


def _renumber(result: BatchResult, index: int, items: list[Any]) -> BatchResult:
    """A result of the batch of what was left, numbered as its line of IN."""
    item = items[index]
    given = item.get("id") if isinstance(item, dict) else None
    return BatchResult(
        index, result.id if result.id is not None else given, result.content, result.usage,
        result.error, result.finish_reason, result.packed, result.prompt_tokens_saved,
    )  # fmt: skip


@dataclass(slots=True)
class Tally:
    """What the run has done so far: for the progress bar and the last line."""

    total: int
    model: str
    answered: dict[int, BatchResult] = field(default_factory=dict)
    failures: dict[int, BatchResult] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    packed: int = 0
    saved: int = 0
    started: float = field(default_factory=time.monotonic)
    this_run: int = 0  # lines finished by this run (the rate is of these)

    def catch_up(self, kept: dict[int, BatchResult]) -> None:
        """Count what the journal kept and the tally did not (an interrupt between)."""
        for index, result in kept.items():
            if index not in self.answered:
                self.add(result)

    def add(self, result: BatchResult) -> None:
        self.this_run += 1
        target = self.answered if result.ok else self.failures
        target[result.index] = result
        if result.usage:
            self.usage = self.usage + result.usage
        self.packed += 1 if result.packed else 0
        self.saved += result.prompt_tokens_saved

    @property
    def done(self) -> int:
        return len(self.answered) + len(self.failures)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def ordered(self) -> list[BatchResult]:
        merged = {**self.failures, **self.answered}
        return [merged[i] for i in sorted(merged)]

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.this_run / elapsed

    def line(self) -> str:
        """`200/200 done, 0 failed, 41.2/s, tokens 3100 in / 9000 out, ~$0.0060 (estimate)`"""
        cost = format_cost(estimate_cost(self.usage, self.model))
        text = (
            f"{self.done}/{self.total} done, {self.failed} failed, {self.rate():.1f}/s, tokens "
            f"{self.usage.prompt_tokens} in / {self.usage.completion_tokens} out, ~{cost}"
            " (estimate)"
        )
        if self.packed:
            text += f"; {self.packed} packed, ~{self.saved} prompt tokens saved (estimate)"
        return text


class ProgressBar:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            columns = (BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
            self._progress = Progress(*columns, console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("", total=self.tally.total)
            self.update()
        return self

    def update(self) -> None:
        if self._progress is not None and self._task is not None:
            tally = self.tally
            cost = format_cost(estimate_cost(tally.usage, tally.model))
            about = f"{tally.rate():.1f}/s · {tally.usage.total_tokens} tokens · ~{cost}"
            self._progress.update(self._task, completed=tally.done, description=about)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
