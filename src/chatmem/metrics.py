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

    def observe_store_op(self, op: str, seconds: float) -> None:
        self.store_op.labels(op).observe(seconds)

    def count_not_replicated(self, op: str) -> None:
        self.store_not_replicated.labels(op).inc()

    def active_streams_now(self) -> int:
        (gauge,) = self.active_streams.collect()
        return int(gauge.samples[0].value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
