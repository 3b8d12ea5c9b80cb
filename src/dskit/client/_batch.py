"""Batching: many independent requests answered with a concurrency that adapts.

The shared core of `DeepSeek.batch` (threads) and `AsyncDeepSeek.batch` (asyncio tasks);
the shells only send. No I/O here: requests become jobs, jobs become units (one
request, or a pack of short questions in one JSON-mode request, see `_batch_pack`), an
AIMD controller says how many units may be in flight, and each finished unit becomes
results.

A shell's loop is `run.step(landing, now)` until it returns None: each step takes what
landed (an `Observed` event of a unit in flight, or a unit `Finished`), reports the
results and limit changes since the last step, and returns the units to send now. Only
the calling thread (or task) steps the run; workers hand it what they saw.

A unit's life (one owner, `BatchRun`; every path ends in results or in singles queued):

    queued --start--> in flight --finish--> results (an answer or an error per job)
                                      \\----> a pack that failed or did not verify:
                                              its questions queued again, one request each

A run left early (`stop()`: Ctrl-C, a callback that raised) reports nothing more; its
workers still in flight leave at their next event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from dskit.client import _batch_pack as packing
from dskit.client._core import ChatParams
from dskit.client._errors import RateLimitError, ServiceUnavailableError, ValidationError
from dskit.client._types import ChatResult, Message, StreamEvent, Usage

OVERLOAD_STATUSES = frozenset({429, 503})
FIRST_OUTPUT = frozenset({"content", "reasoning", "tool_call"})

# ---- concurrency ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Concurrency:
    """AIMD bounds and signals. The limit starts at `start`, grows by one per
    `increase_every` successes up to `maximum`, and halves (not below `minimum`) on a 429
    or 503, and when a first token takes `latency_ratio` times its running baseline and
    at least `latency_floor` seconds more (after `warmup` samples). One congestion event
    halves once: signals from requests started before the last decrease are ignored.
    """

    start: int = 4
    maximum: int = 16
    minimum: int = 1
    increase_every: int = 4
    latency_ratio: float = 3.0
    latency_floor: float = 0.25
    warmup: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.start <= self.maximum:
            raise ValidationError(
                f"concurrency needs 1 <= minimum <= start <= maximum, got {self.minimum}, "
                f"{self.start}, {self.maximum}",
                param="concurrency",
            )
        if self.increase_every < 1:
            raise ValidationError("increase_every must be at least 1", param="concurrency")

    @classmethod
    def fixed(cls, n: int) -> Concurrency:
        return cls(start=n, maximum=n, minimum=n)

    @classmethod
    def coerce(cls, value: Concurrency | int | None) -> Concurrency:
        """None: adaptive with the defaults; an int: that many, fixed."""
        if value is None:
            return cls()
        if isinstance(value, Concurrency):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(
                "concurrency must be an int or a Concurrency", param="concurrency"
            )
        return cls.fixed(value)


@dataclass(frozen=True, slots=True)
class LimitChange:
    """One step of the controller's limit: what it became and why."""

    limit: int
    reason: str  # "start", "increase", "overload" or "latency"


class AIMD:
    """Additive increase, multiplicative decrease of the number of requests in flight."""

    BASELINE_WEIGHT = 0.1  # of a new latency sample in the running baseline

    def __init__(self, config: Concurrency) -> None:
        self.config = config
        self.limit = config.start
        self.epoch = 0  # decreases so far: a unit remembers the epoch it started in
        self.successes = 0
        self.samples = 0
        self.baseline: float | None = None
        self.history: list[LimitChange] = [LimitChange(self.limit, "start")]

    @property
    def limits(self) -> list[int]:
        return [change.limit for change in self.history]

    def success(self, epoch: int, latency: float | None = None) -> None:
        if latency is not None and self._slow(latency):
            self.decrease("latency", epoch)
            return
        self.successes += 1
        if self.successes >= self.config.increase_every and self.limit < self.config.maximum:
            self.successes = 0
            self._set(self.limit + 1, "increase")

    def overload(self, epoch: int) -> None:
        self.decrease("overload", epoch)

    def decrease(self, reason: str, epoch: int) -> None:
        """Halve, once per congestion event (a unit started before the last decrease
        reports the event already answered)."""
        if epoch != self.epoch:
            return
        self.epoch += 1
        self.successes = 0
        halved = max(self.config.minimum, self.limit // 2)
        if halved != self.limit:
            self._set(halved, reason)

    def _slow(self, latency: float) -> bool:
        baseline, config = self.baseline, self.config
        self.samples += 1
        self.baseline = (
            latency if baseline is None else baseline + self.BASELINE_WEIGHT * (latency - baseline)
        )
        if baseline is None or self.samples <= config.warmup:
            return False
        return (
            latency > baseline * config.latency_ratio and latency - baseline > config.latency_floor
        )

    def _set(self, limit: int, reason: str) -> None:
        self.limit = limit
        self.history.append(LimitChange(limit, reason))


# ---- requests and results ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One request of the batch. `question` is set when it may be packed (a question
    without parameters of its own)."""

    index: int
    id: Any
    messages: list[Message]
    params: dict[str, Any]
    question: str | None = None


@dataclass(frozen=True, slots=True)
class BatchError:
    type: str  # the exception's class name, e.g. "RateLimitError"
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> BatchError:
        return cls(type(exc).__name__, str(exc))


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of one request: `content` and `usage`, or `error`.

    `packed` is the number of questions asked in the request that answered it (0: asked
    alone); a pack's usage and `prompt_tokens_saved` (estimated prompt tokens of asking
    alone minus the pack's share, negative when packing cost more) are split evenly
    over its questions, so sums are exact.
    """

    index: int
    id: Any = None
    content: str | None = None
    usage: Usage | None = None
    error: BatchError | None = None
    finish_reason: str | None = None
    packed: int = 0
    prompt_tokens_saved: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        error = self.error
        return {
            "index": self.index,
            "id": self.id,
            "content": self.content,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict() if self.usage else None,
            "error": {"type": error.type, "message": error.message} if error else None,
            "packed": self.packed,
            "prompt_tokens_saved": self.prompt_tokens_saved,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchResult:
        usage, error = data.get("usage"), data.get("error")
        return cls(
            index=int(data["index"]),
            id=data.get("id"),
            content=data.get("content"),
            usage=Usage.from_dict(usage) if isinstance(usage, Mapping) else None,
            error=BatchError(str(error["type"]), str(error["message"])) if error else None,
            finish_reason=data.get("finish_reason"),
            packed=int(data.get("packed") or 0),
            prompt_tokens_saved=int(data.get("prompt_tokens_saved") or 0),
        )


def read_request(item: Any, index: int, system: str | None) -> Job:
    """A job from one request: a question string, `{"id", "question"}`, or
    `{"messages": [...], ...params}` (an `id` key is kept, not sent)."""
    if isinstance(item, str):
        return _question_job(index, None, item, {}, system)
    if not isinstance(item, Mapping):
        raise ValidationError(
            'a request is a question string or an object with "messages" or "question"'
        )
    params = {k: v for k, v in item.items() if k not in ("id", "question", "messages")}
    question, messages = item.get("question"), item.get("messages")
    if isinstance(question, str) and messages is None:
        return _question_job(index, item.get("id"), question, params, system)
    if not isinstance(messages, list) or question is not None:
        raise ValidationError('a request object needs "messages" (a list) or "question" (text)')
    return Job(index, item.get("id"), _with_system(messages, system), params)


def _question_job(
    index: int, job_id: Any, question: str, params: dict[str, Any], system: str | None
) -> Job:
    messages = _with_system([{"role": "user", "content": question}], system)
    return Job(index, job_id, messages, params, None if params else question)


def _with_system(messages: list[Message], system: str | None) -> list[Message]:
    has_system = any(isinstance(m, Mapping) and m.get("role") == "system" for m in messages)
    if system is None or has_system:
        return messages
    return [{"role": "system", "content": system}, *messages]


def _answer(job: Job, result: ChatResult) -> BatchResult:
    return BatchResult(
        job.index, job.id, result.content, result.usage, finish_reason=result.finish_reason
    )


def _failure(job: Job, exc: BaseException | None) -> BatchResult:
    error = BatchError.of(exc) if exc else BatchError("APIError", "no answer")
    return BatchResult(job.index, job.id, error=error)


# ---- the run -------------------------------------------------------------------------


@dataclass(slots=True)
class Unit:
    """What one request asks: a job alone, or several packed."""

    jobs: tuple[Job, ...]
    messages: list[Message]
    params: dict[str, Any]
    packed: bool = False
    epoch: int = 0
    started: float = 0.0
    first_output: float | None = None
    retried: bool = False
    told_output: bool = False  # the worker's own: it has handed on the first output

    @property
    def chat_params(self) -> ChatParams:
        return cast(ChatParams, self.params)

    def telling(self, event: StreamEvent) -> bool:
        """Whether the run wants this event (asked by the unit's worker): the first
        output, and retries; the rest of a stream's chunks say nothing to the controller."""
        if event.type == "retrying":
            return True
        if self.told_output or event.type not in FIRST_OUTPUT:
            return False
        self.told_output = True
        return True


@dataclass(frozen=True, slots=True)
class Observed:
    """An event of a unit in flight that the controller acts on, and when it came."""

    unit: Unit
    event: StreamEvent
    at: float

    def land(self, run: BatchRun) -> None:
        run.observe(self.unit, self.event, self.at)


@dataclass(frozen=True, slots=True)
class Finished:
    """A unit's request ended, with `result` or with `error`."""

    unit: Unit
    result: ChatResult | None = None
    error: BaseException | None = None

    def land(self, run: BatchRun) -> None:
        run.finish(self.unit, self.result, self.error)


Landing = Observed | Finished


def _ignore(item: object) -> None:
    pass


@dataclass(slots=True)
class BatchRun:
    """The owner of every unit's life. The shells call `step` and send what it gives
    them; `on_result` and `on_limit` are called from `step`."""

    controller: AIMD
    total: int
    queue: deque[Unit] = field(default_factory=deque)
    in_flight: int = 0
    results: dict[int, BatchResult] = field(default_factory=dict)
    fresh: list[BatchResult] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)
    on_result: Callable[[BatchResult], object] = _ignore
    on_limit: Callable[[LimitChange], object] = _ignore
    stopped: bool = False
    _limits_told: int = 0

    @classmethod
    def plan(
        cls,
        requests: Iterable[Any],
        *,
        concurrency: Concurrency | int | None = None,
        pack: int | None = None,
        system: str | None = None,
        params: Mapping[str, Any] | None = None,
        on_result: Callable[[BatchResult], object] | None = None,
        on_limit: Callable[[LimitChange], object] | None = None,
    ) -> BatchRun:
        items = list(requests)
        run = cls(
            AIMD(Concurrency.coerce(concurrency)), len(items), shared=dict(params or {}),
            on_result=on_result or _ignore, on_limit=on_limit or _ignore,
        )  # fmt: skip
        jobs = [job for index, item in enumerate(items) if (job := run._read(item, index, system))]
        run._queue_jobs(jobs, _pack_size(pack), system)
        return run

    def _read(self, item: Any, index: int, system: str | None) -> Job | None:
        try:
            return read_request(item, index, system)
        except ValidationError as exc:
            self._add(BatchResult(index, _id_of(item), error=BatchError.of(exc)))
            return None

    def _queue_jobs(self, jobs: list[Job], size: int, system: str | None) -> None:
        group: list[Job] = []
        for job in jobs:
            if size > 1 and job.question is not None and packing.packable(job.question):
                group.append(job)
                if len(group) == size:
                    self.queue.append(self._pack(group, system))
                    group = []
            else:
                self.queue.append(self._single(job))
        if len(group) > 1:
            self.queue.append(self._pack(group, system))
        self.queue.extend(self._single(job) for job in group if len(group) == 1)

    def _single(self, job: Job) -> Unit:
        return Unit((job,), job.messages, {**self.shared, **job.params})

    def _pack(self, jobs: list[Job], system: str | None) -> Unit:
        messages = packing.pack_messages([job.question or "" for job in jobs], system)
        params = {**self.shared, "response_format": dict(packing.JSON_MODE)}
        return Unit(tuple(jobs), messages, params, packed=True)

    # ---- what the shells call ----------------------------------------------------------

    def step(self, landing: Landing | None, now: float) -> list[Unit] | None:
        """One turn of a shell's loop: take in what landed, report the results and limit
        changes since the last turn, and start every unit that may start now (the shell
        sends them). None: every unit is done."""
        if landing is not None:
            landing.land(self)
        self._report()
        if self.finished:
            return None
        units: list[Unit] = []
        while self.ready():
            units.append(self.start(now))
        return units

    def stop(self) -> None:
        """The shell left its loop (done, Ctrl-C, a callback raised): nothing more is
        reported, and workers still in flight leave at their next event."""
        self.stopped = True

    @property
    def finished(self) -> bool:
        return not self.queue and self.in_flight == 0

    def ready(self) -> bool:
        """Whether another unit may start now."""
        return bool(self.queue) and self.in_flight < self.controller.limit

    def start(self, now: float) -> Unit:
        unit = self.queue.popleft()
        unit.epoch, unit.started = self.controller.epoch, now
        unit.first_output, unit.retried, unit.told_output = None, False, False
        self.in_flight += 1
        return unit

    def observe(self, unit: Unit, event: StreamEvent, now: float) -> None:
        """A stream event of a unit in flight: its first output, or a retry (a 429/503 one
        is a congestion signal, though the client retries it itself)."""
        if event.type in FIRST_OUTPUT and unit.first_output is None:
            unit.first_output = now
        elif event.type == "retrying":
            unit.retried = True
            if event.status in OVERLOAD_STATUSES:
                self.controller.overload(unit.epoch)
                unit.epoch = self.controller.epoch

    def finish(self, unit: Unit, result: ChatResult | None, error: BaseException | None) -> None:
        """A unit's request ended with `result` or `error`: its results, or its questions
        queued again one by one. An error that is no request's failure (a worker's
        SystemExit) ends the batch."""
        if error is not None and not isinstance(error, Exception):
            raise error
        self.in_flight -= 1
        self._signal(unit, error)
        if not unit.packed:
            job = unit.jobs[0]
            self._add(_answer(job, result) if result is not None else _failure(job, error))
            return
        answers = packing.split_answers(result.content, len(unit.jobs)) if result else None
        if result is None or answers is None:
            self.queue.extendleft(self._single(job) for job in reversed(unit.jobs))
            return
        self._add_pack(unit, result, answers)

    def ordered(self) -> list[BatchResult]:
        return [self.results[i] for i in sorted(self.results)]

    # ---- inside ----------------------------------------------------------------------

    def _report(self) -> None:
        """The results finished since the last turn, in the order they finished, then the
        limit's changes (the first turn tells its start)."""
        fresh, self.fresh = self.fresh, []
        for result in fresh:
            self.on_result(result)
        history = self.controller.history
        told, self._limits_told = self._limits_told, len(history)
        for change in history[told:]:
            self.on_limit(change)

    def _signal(self, unit: Unit, error: BaseException | None) -> None:
        if isinstance(error, RateLimitError | ServiceUnavailableError):
            self.controller.overload(unit.epoch)
        elif error is None:
            latency = None
            if unit.first_output is not None and not unit.retried:
                latency = unit.first_output - unit.started
            self.controller.success(unit.epoch, latency)

    def _add_pack(self, unit: Unit, result: ChatResult, answers: list[str]) -> None:
        count = len(unit.jobs)
        params = self._single(unit.jobs[0]).chat_params  # what each would be asked with
        alone = sum(packing.prompt_tokens(job.messages, params) for job in unit.jobs)
        used = (
            result.usage.prompt_tokens
            if result.usage
            else packing.prompt_tokens(unit.messages, unit.chat_params)
        )
        usages = packing.share_usage(result.usage, count)
        saved = packing.shares(alone - used, count)
        for i, job in enumerate(unit.jobs):
            self._add(
                BatchResult(
                    job.index, job.id, answers[i], usages[i],
                    finish_reason=result.finish_reason, packed=count, prompt_tokens_saved=saved[i],
                )
            )  # fmt: skip

    def _add(self, result: BatchResult) -> None:
        self.results[result.index] = result
        self.fresh.append(result)


def _pack_size(pack: int | None) -> int:
    if pack is None:
        return 1
    if isinstance(pack, bool) or not isinstance(pack, int) or not 1 <= pack <= packing.MAX_PACK:
        raise ValidationError(f"pack must be an int from 1 to {packing.MAX_PACK}", param="pack")
    return pack


def _id_of(item: Any) -> Any:
    return item.get("id") if isinstance(item, Mapping) else None
