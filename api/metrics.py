"""Prometheus metrics for one app instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("unprompt_requests_total", "HTTP requests", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("unprompt_request_seconds", "request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("unprompt_stage_seconds", "pipeline stage time per image", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("unprompt_batch_size", "images per model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.errors = Counter("unprompt_errors_total", "refused or failed requests", ["reason"],
                              registry=self.registry)
        self.index_build = Gauge("unprompt_index_loaded_timestamp_seconds", "when the serving build of each index "
                                 "was loaded (its build id is a label)", ["index", "build_id"], registry=self.registry)
        self.index_load = Gauge("unprompt_index_load_seconds", "how long the serving build of each index took to load",
                                ["index"], registry=self.registry)
        self.reloads = Counter("unprompt_index_reloads_total", "index builds taken up or refused by a reload",
                               ["index", "outcome"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
