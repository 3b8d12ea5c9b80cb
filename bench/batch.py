"""Batches: fixed concurrency against adaptive (AIMD), on a free and on a capped server.

    .venv/bin/python bench/batch.py [--questions 200] [--token-ms 3] [--cap 8]
    .venv/bin/python bench/batch.py --storm 2000     # 5 % faults and a 429 storm

`client.batch` answers `--questions` short questions (thinking off) against the
simulator, once with no cap and once with the simulator refusing (429) above `--cap`
concurrent requests. Printed per setting: wall time, lines answered, 429s seen, and the
time as a ratio of the best fixed setting that answered every line (the floor a user
could reach by knowing the server's cap in advance).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from dskit import Concurrency, DeepSeek, RetryPolicy
from dskit.sim import SimConfig, SimServer

SETTINGS: list[tuple[str, int | Concurrency]] = [
    ("fixed 4", 4),
    ("fixed 8", 8),
    ("fixed 16", 16),
    ("fixed 32", 32),
    ("adaptive 4..32", Concurrency(start=4, maximum=32)),
    ("adaptive 8..32", Concurrency(start=8, maximum=32)),
]


@dataclass
class Row:
    setting: str
    seconds: float
    answered: int
    refusals: int


def run(sim: SimServer, setting: int | Concurrency, questions: int) -> tuple[float, int, int]:
    refused_before = sim.stats.rejected_concurrency
    asks = [f"Question {n}: is {n} prime?" for n in range(questions)]
    retry = RetryPolicy(max_retries=3, base_delay=0.05, max_delay=0.5)
    with DeepSeek(api_key="sk-bench", base_url=sim.base_url, retry=retry) as client:
        started = time.perf_counter()
        results = client.batch(asks, concurrency=setting, thinking=False)
        seconds = time.perf_counter() - started
    refusals = sim.stats.rejected_concurrency - refused_before
    return seconds, sum(r.error is None for r in results), refusals


def table(title: str, rows: list[Row], questions: int) -> None:
    fixed = [r for r in rows if r.setting.startswith("fixed")]
    complete = [r.seconds for r in fixed if r.answered == questions]
    floor = min(complete) if complete else float("nan")
    print(f"\n{title}")
    print(f"{'setting':<16} {'seconds':>8} {'answered':>9} {'429s':>6} {'x best fixed':>13}")
    for r in rows:
        print(
            f"{r.setting:<16} {r.seconds:>8.2f} {r.answered:>5}/{questions:<3} {r.refusals:>6} "
            f"{r.seconds / floor:>13.2f}"
        )


def storm(questions: int, token_ms: float, cap: int) -> None:
    """`questions` through `client.batch` (adaptive) against a simulator failing 5 % of
    requests at random and refusing (429) above `cap` concurrent ones: every answer must
    come back once, in order."""
    config = SimConfig(token_ms=token_ms, max_concurrency=cap, fault_rate=0.05, seed=7)
    asks = [{"id": f"q{n}", "question": f"Question {n}: is {n} prime?"} for n in range(questions)]
    with SimServer(config) as sim, DeepSeek(api_key="sk-bench", base_url=sim.base_url) as client:
        started = time.perf_counter()
        results = client.batch(asks, concurrency=Concurrency(start=8, maximum=64), thinking=False)
        seconds = time.perf_counter() - started
        stats = sim.stats
    in_order = [r.id for r in results] == [a["id"] for a in asks]
    answered = sum(r.error is None for r in results)
    print(f"\n{questions} questions, 5 % faults, 429 above {cap} concurrent: {seconds:.1f} s")
    print(f"answered {answered}/{questions}, errors {questions - answered}, in order: {in_order}")
    print(f"simulator: {stats.requests} requests, {stats.faults_injected} faults injected, "
          f"{stats.rejected_concurrency} refused for concurrency, "
          f"{stats.prefix_requests} resumes")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--token-ms", type=float, default=3.0)
    parser.add_argument("--cap", type=int, default=8)
    parser.add_argument("--storm", type=int, default=0, help="run the storm with N questions")
    args = parser.parse_args()
    if args.storm:
        storm(args.storm, args.token_ms, args.cap)
        return
    for title, cap in (("no cap", None), (f"simulator capped at {args.cap}", args.cap)):
        rows = []
        with SimServer(SimConfig(token_ms=args.token_ms, max_concurrency=cap)) as sim:
            for name, setting in SETTINGS:
                seconds, answered, refusals = run(sim, setting, args.questions)
                rows.append(Row(name, seconds, answered, refusals))
        table(title, rows, args.questions)


if __name__ == "__main__":
    main()
