"""Prometheus metrics of the server (a registry of its own, so several apps in one process do not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("dlm_requests", "HTTP requests by status", ["status"], registry=r)
        self.queue_depth = Gauge("dlm_queue_depth", "Requests waiting for a batch slot", registry=r)
        self.batch_size = Gauge("dlm_batch_size", "Rows in the running batches", registry=r)
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
        self.step_latency = Histogram(
            "dlm_step_latency_seconds", "Wall time of one denoising step", registry=r, buckets=buckets
        )
        self.tokens = Counter("dlm_generated_tokens", "Generated tokens (rate() gives tokens/s)", registry=r)
        self.nfe = Histogram("dlm_request_nfe", "Forward passes per request row", registry=r,
                             buckets=(1, 4, 16, 32, 64, 128, 256, 512, 1024, 4096))  # fmt: skip

    def finish(self, result: dict) -> None:
        self.tokens.inc(len(result["sequence"]))
        self.nfe.observe(result["nfe"])

    def render(self) -> str:
        return generate_latest(self.registry).decode()
