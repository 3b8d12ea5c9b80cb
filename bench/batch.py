"""Batches: fixed concurrency against adaptive (AIMD), on a free and on a capped server;
and what packing short questions saves.

    .venv/bin/python bench/batch.py [--questions 200] [--token-ms 3] [--cap 8]
    .venv/bin/python bench/batch.py --storm 2000     # 5 % faults and a 429 storm
    .venv/bin/python bench/batch.py --pack 5,10,20   # single requests against packs

`client.batch` answers `--questions` short questions (thinking off) against the
simulator, once with no cap and once with the simulator refusing (429) above `--cap`
concurrent requests. Printed per setting: wall time, lines answered, 429s seen, and the
time as a ratio of the best fixed setting that answered every line (the floor a user
could reach by knowing the server's cap in advance).

`--pack` answers the same short tickets as single requests and with `pack=N` for each N
(default concurrency, thinking off), with a ticket-classifier system prompt and with
none, the simulator's context cache emptied before each run. Token figures are the
usage the simulator reported (its prompt counts are the V4 tokenizer's, its packed
replies are counted in real tokens); the cost is dskit's list-price estimate
(`cli/_pricing.py`, off-peak). Each is also printed as a ratio of single requests, with
the client's own estimate of the prompt tokens saved beside the measured difference.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from dskit import BatchResult, Concurrency, DeepSeek, RetryPolicy
from dskit._tokens import count_text
from dskit.cli._pricing import estimate_cost
from dskit.client._types import Usage
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


# ---- packing ------------------------------------------------------------------------

TICKET_SYSTEM = """You are the first-line triage assistant for the support desk of an online \
shop that sells home electronics. Each message is one customer ticket. Classify it into \
exactly one category:
- billing: charges, double charges, refunds, invoices, payment methods, coupons;
- delivery: order status, shipping delays, lost or damaged parcels, returns, exchanges;
- bug: the website or the mobile app misbehaves (crashes, errors, pages that do not load);
- account: sign-in problems, password resets, email changes, closing an account;
- other: anything else, including praise and product questions.

Reply with the category in lower case, then a dash, then one short sentence that says why, \
quoting the customer's words where you can. Never promise a refund or a delivery date. If \
the ticket mentions a safety issue (smoke, fire, a burning smell, an electric shock), use \
the category other and start the sentence with URGENT. Do not ask follow-up questions."""

TICKET_SAMPLES = (
    "I was charged twice for order {n}.",
    "The app crashes as soon as I open my cart.",
    "Where is my parcel? Order {n} was due last week.",
    "I can't sign in since I changed my email address.",
    "The headphones from order {n} arrived broken, I want to return them.",
    "My invoice for order {n} shows the wrong address.",
    "The checkout page stays blank on my phone.",
    "Great service, thanks for the quick help!",
    "The charger smells like it is burning when plugged in.",
    "Can I pay order {n} with a gift card and a credit card?",
)
OFF_PEAK = datetime(2026, 11, 28, 12, tzinfo=UTC)  # a Saturday: list price, not peak
MODEL = "deepseek-flash"


def tickets(count: int) -> list[str]:
    samples = len(TICKET_SAMPLES)
    return [f"Ticket {n}: " + TICKET_SAMPLES[n % samples].format(n=4000 + n) for n in range(count)]


@dataclass
class PackRow:
    setting: str
    requests: int
    usage: Usage
    seconds: float
    cost: float  # with the cache hits the simulator reported
    uncached: float  # had nothing been cached
    packed: int  # lines answered in a pack
    saved_estimate: int  # the client's sum of prompt_tokens_saved
    same: int  # lines whose answer is the single request's


def pack_run(
    sim: SimServer, asks: list[str], system: str | None, pack: int | None, alone: list[str] | None
) -> tuple[PackRow, list[BatchResult]]:
    sim.clear_cache()
    before = sim.stats.requests
    with DeepSeek(api_key="sk-bench", base_url=sim.base_url) as client:
        started = time.perf_counter()
        results = client.batch(asks, pack=pack, system=system, thinking=False, model=MODEL)
        seconds = time.perf_counter() - started
    usage = sum((r.usage for r in results if r.usage), Usage())
    answers = [r.content for r in results]
    row = PackRow(
        f"pack {pack}" if pack else "single", sim.stats.requests - before, usage, seconds,
        estimate_cost(usage, MODEL, OFF_PEAK), estimate_cost(_uncached(usage), MODEL, OFF_PEAK),
        sum(r.packed > 0 for r in results),
        sum(r.prompt_tokens_saved for r in results),
        sum(a == b for a, b in zip(answers, alone or answers, strict=True)),
    )  # fmt: skip
    return row, results


def _uncached(usage: Usage) -> Usage:
    return Usage(
        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, 0, usage.prompt_tokens
    )


def pack_table(title: str, rows: list[PackRow], questions: int) -> None:
    base = rows[0]
    print(f"\n{title}: {questions} tickets, load average {os.getloadavg()[0]:.1f}")
    print(f"{'setting':<9} {'requests':>8} {'prompt':>8} {'cached':>8} {'completion':>10} "
          f"{'total':>8} {'seconds':>8} {'cost $':>9} {'uncached $':>10} {'packed':>7} "
          f"{'same':>5}")  # fmt: skip
    for r in rows:
        u = r.usage
        print(f"{r.setting:<9} {r.requests:>8} {u.prompt_tokens:>8} "
              f"{u.prompt_cache_hit_tokens:>8} {u.completion_tokens:>10} {u.total_tokens:>8} "
              f"{r.seconds:>8.2f} {r.cost:>9.5f} {r.uncached:>10.5f} {r.packed:>7} "
              f"{r.same:>5}")  # fmt: skip
    print(f"{'x single':<9} {'requests':>8} {'prompt':>8} {'completion':>10} {'total':>8} "
          f"{'seconds':>8} {'cost':>8} {'uncached':>8}   prompt tokens saved: estimate / "
          "measured")  # fmt: skip
    for r in rows[1:]:
        u, b = r.usage, base.usage
        measured = b.prompt_tokens - u.prompt_tokens
        verdict = "agree" if measured == r.saved_estimate else "DISAGREE"
        print(f"{r.setting:<9} {r.requests / base.requests:>8.3f} "
              f"{u.prompt_tokens / b.prompt_tokens:>8.3f} "
              f"{u.completion_tokens / b.completion_tokens:>10.3f} "
              f"{u.total_tokens / b.total_tokens:>8.3f} {r.seconds / base.seconds:>8.2f} "
              f"{r.cost / base.cost:>8.3f} {r.uncached / base.uncached:>8.3f}   "
              f"{r.saved_estimate} / {measured} ({verdict})")  # fmt: skip


def pack_bench(sizes: list[int], questions: int, token_ms: float) -> None:
    asks = tickets(questions)
    with SimServer(SimConfig(token_ms=token_ms)) as sim:
        for title, system in (("ticket classifier system prompt", TICKET_SYSTEM),
                              ("no system prompt", None)):  # fmt: skip
            single, alone = pack_run(sim, asks, system, None, None)
            answers = [r.content or "" for r in alone]
            rows = [single] + [pack_run(sim, asks, system, n, answers)[0] for n in sizes]
            pack_table(title, rows, questions)
            tokens = sum(count_text(a) for a in answers)
            print(f"(single answers: {single.usage.completion_tokens} completion tokens as the "
                  f"simulator counts them, one a word; {tokens} by the tokenizer)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--token-ms", type=float, default=3.0)
    parser.add_argument("--cap", type=int, default=8)
    parser.add_argument("--storm", type=int, default=0, help="run the storm with N questions")
    parser.add_argument("--pack", help="compare single requests with these pack sizes: 5,10,20")
    args = parser.parse_args()
    if args.pack:
        pack_bench([int(n) for n in args.pack.split(",")], args.questions, args.token_ms)
        return
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
