"""Prometheus metrics in a registry owned by one app (several apps in a process never collide).

Names follow Prometheus conventions (`_total`, `_seconds`); the alert rules in
deploy/alerts.yml use them, so renaming one is a breaking change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dskit.client._types import Usage

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TOTAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Metrics:
    """Every metric the gateway exports."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "dskit_gateway_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "dskit_gateway_time_to_first_token_seconds",
            "From request to the first generated token, by endpoint",
            ["endpoint"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "dskit_gateway_answer_duration_seconds",
            "From request to the end of the answer, by endpoint",
            ["endpoint"], buckets=TOTAL_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "dskit_gateway_tokens", "Tokens by kind (prompt, completion, cached, reasoning)",
            ["kind"], registry=r,
        )  # fmt: skip
        self.active_streams = Gauge(
            "dskit_gateway_active_streams", "Streams being sent to clients now", registry=r
        )
        self.active_generations = Gauge(
            "dskit_gateway_active_generations", "Answers being generated now", registry=r
        )
        self.retries = Counter(
            "dskit_gateway_upstream_retries", "Upstream requests retried", registry=r
        )
        self.resumes = Counter(
            "dskit_gateway_upstream_resumes", "Broken upstream streams resumed", registry=r
        )
        self.client_resumes = Counter(
            "dskit_gateway_stream_resumes", "Client reconnects with Last-Event-ID", registry=r
        )
        self.errors = Counter("dskit_gateway_errors", "Errors by kind", ["kind"], registry=r)

    def count_usage(self, usage: Usage | None) -> None:
        if usage is None:
            return
        self.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.tokens.labels("completion").inc(usage.completion_tokens)
        self.tokens.labels("cached").inc(usage.prompt_cache_hit_tokens)
        self.tokens.labels("reasoning").inc(usage.reasoning_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
