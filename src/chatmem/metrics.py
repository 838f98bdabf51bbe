"""Prometheus metrics, one registry per app so that tests and workers do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STORE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turn_latency = Histogram(
            "chatmem_turn_seconds",
            "Whole chat turn",
            ["outcome"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.first_token = Histogram(
            "chatmem_time_to_first_token_seconds",
            "Turn start to first relayed token",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.store_op = Histogram(
            "chatmem_store_op_seconds",
            "Redis memory store operation",
            ["op"],
            buckets=_STORE_BUCKETS_S,
            registry=r,
        )
        self.tokens = Counter("chatmem_tokens_total", "Tokens by kind", ["kind"], registry=r)
        self.active_streams = Gauge(
            "chatmem_active_streams", "Streamed replies being generated now", registry=r
        )
        self.degradations = Counter(
            "chatmem_degradations_total", "Turns served without memory", ["reason"], registry=r
        )
        self.generations_recovered = Counter(
            "chatmem_generations_recovered_total",
            "Replies of generations whose process died, stored from their event stream",
            registry=r,
        )
        self.store_not_replicated = Counter(
            "chatmem_store_not_replicated_total",
            "Writes that fewer replicas confirmed than CHATMEM_REDIS_WAIT_REPLICAS asks",
            ["op"],
            registry=r,
        )
        self.requests = Counter(
            "chatmem_http_requests_total", "HTTP requests", ["method", "status"], registry=r
        )

        self.jobs = Gauge(
            "chatmem_jobs",
            "Background jobs by state (queued, running, delayed, dead), as last seen",
            ["state"],
            registry=r,
        )
        self.jobs_done = Counter(
            "chatmem_jobs_done_total", "Background jobs done", ["kind"], registry=r
        )
        self.jobs_failed = Counter(
            "chatmem_jobs_failed_total",
            "Background job attempts that failed (retried, or dead)",
            ["kind", "outcome"],
            registry=r,
        )
        self.job_lag = Histogram(
            "chatmem_job_lag_seconds",
            "Background job: queued to done",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.memory_invalid = Counter(
            "chatmem_memory_invalid_output_total",
            "Model output for a summary or memory operations that was dropped as invalid",
            ["kind"],
            registry=r,
        )
        self.uncovered_trims = Counter(
            "chatmem_summary_uncovered_trims_total",
            "Messages trimmed from Redis before the summary covered them (the hard cap)",
            registry=r,
        )
        self.background_tokens = Counter(
            "chatmem_background_tokens_total",
            "Model tokens spent on background work",
            ["kind"],
            registry=r,
        )

    def observe_store_op(self, op: str, seconds: float) -> None:
        self.store_op.labels(op).observe(seconds)

    def count_not_replicated(self, op: str) -> None:
        self.store_not_replicated.labels(op).inc()

    def active_streams_now(self) -> int:
        (gauge,) = self.active_streams.collect()
        return int(gauge.samples[0].value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
