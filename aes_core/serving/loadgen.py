"""A load generator for the Triton text models (``scorer``, ``student``): a user's view.

``run_load`` splits essays into length-sorted requests (the client's batches, as
``TritonScorer`` sends them), deals them round-robin to ``clients`` separate processes, each
with its own HTTP connection, starts them together and reports essays/s over the whole run
and the latency of every request. ``single_latency`` sends one essay per request from one
client, one after another: the latency a teacher sees for one essay.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from aes_core.models.tokens import text_batches


@dataclass
class LoadResult:
    """What a load run measured (times in seconds, latencies in milliseconds)."""

    essays: int
    requests: int
    clients: int
    wall_s: float
    essays_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _infer(client, model: str, texts: list[str]):
    import tritonclient.http as httpclient

    arr = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
    inp = httpclient.InferInput("TEXT", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr, binary_data=True)
    out = httpclient.InferRequestedOutput("SCORE", binary_data=True)
    return client.infer(model, [inp], outputs=[out])


def _client(url: str, model: str, batches: list[list[str]], barrier, queue) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=120.0,
                                              network_timeout=600.0)
    lat, errors = [], []
    barrier.wait()
    t0 = time.time()
    for texts in batches:
        s = time.perf_counter()
        try:
            _infer(client, model, texts)
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            errors.append(f"{type(e).__name__}: {e}"[:300])
        lat.append(time.perf_counter() - s)
    t1 = time.time()
    client.close()
    queue.put({"t0": t0, "t1": t1, "lat": lat, "n": sum(len(b) for b in batches),
               "errors": errors})


def _summary(parts: list[dict], clients: int) -> LoadResult:
    lat = np.array([x for p in parts for x in p["lat"]], dtype=np.float64) * 1e3
    wall = max(p["t1"] for p in parts) - min(p["t0"] for p in parts)
    n = sum(p["n"] for p in parts)
    q = (lambda k: float(np.percentile(lat, k))) if len(lat) else (lambda k: float("nan"))
    return LoadResult(essays=n, requests=len(lat), clients=clients, wall_s=wall,
                      essays_per_s=n / wall if wall > 0 else float("nan"),
                      p50_ms=q(50), p90_ms=q(90), p99_ms=q(99), max_ms=q(100),
                      errors=[e for p in parts for e in p["errors"]][:10])


def run_load(url: str, model: str, texts: list[str], clients: int,
             batch_size: int) -> LoadResult:
    """``clients`` processes send ``texts`` as length-sorted requests of ``batch_size``."""
    if clients < 1 or batch_size < 1:
        raise ValueError(f"clients ({clients}) and batch_size ({batch_size}) must be >= 1")
    batches = [[texts[i] for i in idx] for idx in text_batches(texts, batch_size)]
    shares = [batches[c::clients] for c in range(clients)]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, model, s, barrier, queue), daemon=True)
             for s in shares]
    for p in procs:
        p.start()
    parts = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return _summary(parts, clients)


def single_latency(url: str, model: str, texts: list[str], requests: int,
                   warmup: int = 3, max_seconds: float | None = None,
                   min_requests: int = 10) -> LoadResult:
    """One client, one essay per request, one request after another: ``requests`` of them,
    or fewer when ``max_seconds`` have passed and ``min_requests`` are done (a slow model
    does not hold a benchmark for minutes; ``requests`` in the result says how many ran)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=120.0,
                                              network_timeout=600.0)
    picks = [texts[i % len(texts)] for i in range(requests + warmup)]
    for t in picks[:warmup]:
        _infer(client, model, [t])
    lat, errors = [], []
    t0 = time.time()
    for i, t in enumerate(picks[warmup:]):
        if max_seconds is not None and i >= min_requests and time.time() - t0 > max_seconds:
            break
        s = time.perf_counter()
        try:
            _infer(client, model, [t])
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}"[:300])
        lat.append(time.perf_counter() - s)
    client.close()
    return _summary([{"t0": t0, "t1": time.time(), "lat": lat, "n": len(lat),
                      "errors": errors}], 1)
