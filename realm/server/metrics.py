"""The server's Prometheus metrics (prometheus_client), per tenant, in a registry of its own.

Requests by endpoint and status, prompt and completion tokens, request latency and time to first
token, runs in flight. The engine's figures (the scheduler's steps and sequences per step, KV blocks)
of each loaded model come from `watch_engine(stats)`, and each served model's state (loaded, bytes,
requests holding it) from `watch_models(status)`, both polled at every scrape and labelled by model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from host_functions.engine.model import Model

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class ServerMetrics:
    """Every metric of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("realm_requests", "Requests answered, by tenant, endpoint and HTTP status",
                                ["tenant", "endpoint", "status"], registry=r)
        self.tokens = Counter("realm_tokens", "Tokens processed, by tenant and kind (prompt, completion)",
                              ["tenant", "kind"], registry=r)
        self.latency = Histogram("realm_request_seconds", "Request latency, first byte in to last byte out",
                                 ["tenant", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("realm_time_to_first_token_seconds", "Time from request to its first text",
                              ["tenant", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.usage_dropped = Counter("realm_usage_records_dropped", "Usage records the registry did not get "
                                     "(its writer's queue full, or the database down)", registry=r)
        self.in_flight = Gauge("realm_requests_in_flight", "Requests being generated", ["tenant"], registry=r)
        self.model_requests = Counter("realm_model_requests", "Requests admitted to a model, by model and endpoint",
                                      ["model", "endpoint"], registry=r)
        self._engine = _EngineCollector()
        r.register(self._engine)

    def watch_engine(self, stats: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
        """Hook for the engine: `stats()` returns, per loaded model id, gauges such as {"kv_blocks_used": ..,
        "kv_blocks_total": ..}, exported as realm_engine_<name>{model=...} at every scrape."""
        self._engine.stats = stats

    def watch_models(self, status: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        """Hook for the model set: `status()` lists each model's id, loaded, bytes and in_use, exported as
        realm_model_loaded, realm_model_bytes and realm_model_in_use {model=...} at every scrape."""
        self._engine.models = status

    def render(self) -> bytes:
        return generate_latest(self.registry)


def engine_stats(model: Model) -> dict[str, float]:
    """The scheduler's and the KV pool's figures, as gauges: steps, sequences per step (mean, largest),
    KV blocks used, at peak and in all, the positions a block holds, and the prefix cache's bytes, prompt
    positions looked up and found there, and their ratio (docs/prefix_cache.md)."""
    figures: dict[str, float] = {}
    if model.scheduler is not None:
        stats = model.scheduler.stats
        figures |= {"scheduler_steps": stats.steps, "scheduler_mean_batch": stats.mean_batch,
                    "scheduler_max_batch": stats.max_batch}
    pool = model.backend.kv_pool
    if pool is not None:
        kv = pool.stats()
        figures |= {"kv_blocks_used": kv.blocks_used, "kv_blocks_peak": kv.blocks_peak,
                    "kv_blocks_total": kv.blocks_total, "kv_block_tokens": kv.block_tokens,
                    # aggregates over every tenant only: nothing says whose prefixes are cached
                    "prefix_cache_bytes": kv.cached_blocks * kv.block_bytes,
                    "prefix_cache_lookup_tokens": kv.lookup_tokens, "prefix_cache_hit_tokens": kv.hit_tokens,
                    "prefix_cache_hit_rate": kv.hit_tokens / kv.lookup_tokens if kv.lookup_tokens else 0.0}
    return figures


class _EngineCollector(Collector):
    def __init__(self) -> None:
        self.stats: Callable[[], Mapping[str, Mapping[str, float]]] | None = None
        self.models: Callable[[], Sequence[Mapping[str, Any]]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}

        def gauge(name: str, what: str, model: str, value: float) -> None:
            if name not in families:
                families[name] = GaugeMetricFamily(name, what, labels=["model"])
            families[name].add_metric([model], float(value))

        for model, figures in (self.stats() if self.stats is not None else {}).items():
            for name, value in figures.items():
                gauge(f"realm_engine_{name}", f"engine statistic {name}", model, value)
        for status in self.models() if self.models is not None else ():
            gauge("realm_model_loaded", "1 while the model is loaded", status["id"], status["loaded"])
            gauge("realm_model_bytes", "What the model holds loaded (measured; estimated before its first load)",
                  status["id"], status["bytes"])
            gauge("realm_model_in_use", "Requests holding the model", status["id"], status["in_use"])
        yield from families.values()
