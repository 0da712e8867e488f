"""Where a scorer's time goes: seconds per stage (tokenize, device, gbdt wait, blend).

``StageClock`` accumulates wall seconds per stage; a Triton model publishes them
(``TritonStageMetrics``) as the Prometheus counter
``aes_scorer_stage_seconds{model, instance, stage}`` (with ``aes_scorer_essays`` and
``aes_scorer_requests``) on the server's metrics port, next to Triton's own queue and compute
counters. ``parse_prometheus`` and ``stage_breakdown`` read them back: ms per request
and per essay for each stage between two scrapes.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

STAGES = ("tokenize", "device", "gbdt_wait", "blend")  # what the scorers time
STAGE_METRIC = "aes_scorer_stage_seconds"
ESSAYS_METRIC = "aes_scorer_essays"
REQUESTS_METRIC = "aes_scorer_requests"
# Triton's own per-model counters (microseconds), read beside ours
TRITON_METRICS = {"queue": "nv_inference_queue_duration_us",
                  "compute_input": "nv_inference_compute_input_duration_us",
                  "compute_infer": "nv_inference_compute_infer_duration_us",
                  "compute_output": "nv_inference_compute_output_duration_us",
                  "request": "nv_inference_request_duration_us"}
TRITON_COUNT = "nv_inference_request_success"


class StageClock:
    """Seconds per stage since creation; ``take()`` returns (and forgets) what was added."""

    def __init__(self) -> None:
        self._pending: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._pending[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self._pending[name] += seconds

    def take(self) -> dict[str, float]:
        out, self._pending = dict(self._pending), defaultdict(float)
        return out


class TritonStageMetrics:
    """A Triton Python model's seconds per stage as custom metrics (Prometheus counters on the
    server's metrics port). ``pb_utils`` is the stub's ``triton_python_backend_utils``. Every
    metric is made here, when the model loads; a server without the custom-metrics API, or
    ``AES_TRITON_STAGE_METRICS=0``, serves the model without them."""

    def __init__(self, pb_utils, model: str, instance: str):
        import os

        self.labels = {"model": model, "instance": instance}
        self.family = None
        if os.environ.get("AES_TRITON_STAGE_METRICS", "1") == "0":
            return
        try:
            counter = pb_utils.MetricFamily.COUNTER
            self.family = pb_utils.MetricFamily(
                name=STAGE_METRIC, description="seconds the scorer spent per stage",
                kind=counter)
            # a family must outlive its metrics: keep every family referenced
            self.counts = {n: pb_utils.MetricFamily(name=n, description=f"{what} scored",
                                                    kind=counter)
                           for n, what in ((ESSAYS_METRIC, "essays"),
                                           (REQUESTS_METRIC, "requests"))}
            self.essays = self.counts[ESSAYS_METRIC].Metric(labels=self.labels)
            self.requests = self.counts[REQUESTS_METRIC].Metric(labels=self.labels)
            self.stages = {s: self.family.Metric(labels={**self.labels, "stage": s})
                           for s in STAGES}
        except Exception:  # noqa: BLE001 - metrics are an extra, never a reason to fail
            self.family = None

    def publish(self, seconds: dict[str, float], requests: int, essays: int) -> None:
        if self.family is None:
            return
        try:
            for stage, s in seconds.items():
                if stage in self.stages:
                    self.stages[stage].increment(s)
            self.requests.increment(requests)
            self.essays.increment(essays)
        except Exception:  # noqa: BLE001 - a metrics failure must not fail the request
            self.family = None


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text exposition -> {(metric, frozenset(labels)): value}; comments skipped."""
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m or line.startswith("#"):
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def _value(metrics: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def stage_breakdown(before: dict, after: dict, model: str) -> dict[str, float | int]:
    """ms per request in each stage of ``model`` between two scrapes (our stages, then
    Triton's queue / compute counters), and the requests and essays it saw."""
    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests = delta(REQUESTS_METRIC, model=model)
    essays = delta(ESSAYS_METRIC, model=model)
    out: dict[str, float | int] = {"requests": int(requests), "essays": int(essays)}
    if requests <= 0:
        return out
    stages = sorted({dict(ls).get("stage", "") for (n, ls) in after
                     if n == STAGE_METRIC and dict(ls).get("model") == model} - {""})
    for s in stages:
        out[f"{s}_ms_per_request"] = round(delta(STAGE_METRIC, model=model, stage=s)
                                           / requests * 1e3, 3)
    served = delta(TRITON_COUNT, model=model)
    for key, name in TRITON_METRICS.items():
        if served > 0:
            out[f"triton_{key}_ms_per_request"] = round(delta(name, model=model) / served / 1e3,
                                                        3)
    return out


def scrape(metrics_url: str, timeout_s: float = 10.0) -> dict[tuple[str, frozenset], float]:
    """Read a Prometheus endpoint (``http://host:port/metrics``)."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as r:  # noqa: S310 - local
        return parse_prometheus(r.read().decode("utf-8", errors="replace"))
