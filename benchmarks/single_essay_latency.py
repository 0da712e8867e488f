"""One essay per request, in process: where a single essay's latency goes on the GPU, with and
without CUDA graphs.

For each configuration a ``TorchScorer`` of the bundle (the ensemble, and the student when the
bundle has one) scores ``--requests`` essays one request each, each essay seen for the first
time; it reports p50 / p99 / max of the whole request and of its device stage, the time to
load (and capture), and how far each configuration's blended scores are from the first
configuration's (max |difference|, fraction of changed 1..6 scores).

Configurations (``--configs``, comma-separated; ``+`` combines): ``eager``; ``cudnn`` (SDPA
may use cuDNN's attention); ``compiled`` (torch.compile); ``graphs`` or ``graphs:S`` (CUDA
graphs for requests of up to ``--graph-batch`` essays, lengths in steps of ``--bucket``, fold
models on S streams); ``streams:S`` (requests without graphs: fold models on S streams). On a
CPU nothing is captured and there are no streams, so every configuration is eager there (a
smoke run).

``--batch N`` sends N essays per request instead of one (in-process throughput of large
requests: essays/s is reported too); ``--per-model`` also times each fold model alone on
one request of that size (which heads cost what).

    python benchmarks/single_essay_latency.py --bundle var/storage/serving \\
        --data DATA/aes2/test.csv.gz --configs eager,graphs,graphs:4 --out benchmarks/results

Writes ``single_essay_gpu.json`` and ``single_essay_gpu.png`` to ``--out`` and prints the
hardware with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.config import ServingSection  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402

WARMUP_REQUESTS = 3  # scored before the timed ones (first calls load kernels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a serving bundle folder (manifest.json)")
    ap.add_argument("--data", required=True, help="essays (essay_id, full_text)")
    ap.add_argument("--requests", type=int, default=200, help="timed requests")
    ap.add_argument("--configs", default="eager,graphs,graphs:4")
    ap.add_argument("--graph-batch", type=int, default=4, help="largest request in graphs")
    ap.add_argument("--bucket", type=int, default=32, help="graph length step (tokens)")
    ap.add_argument("--gbdt-workers", type=int, default=4)
    ap.add_argument("--no-student", action="store_true", help="the ensemble only")
    ap.add_argument("--batch", type=int, default=1, help="essays per request")
    ap.add_argument("--per-model", action="store_true", help="time each fold model too")
    ap.add_argument("--name", default="single_essay_gpu", help="stem of the output files")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return ap.parse_args(argv)


def overrides(config: str, a: argparse.Namespace) -> dict[str, Any]:
    """``TorchScorer`` options of a configuration (parts joined by ``+``)."""
    out: dict[str, Any] = {}
    for part in config.split("+"):
        name, _, arg = part.partition(":")
        if name == "eager":
            continue
        if name == "cudnn":
            out["cudnn_attention"] = True
        elif name == "compiled":
            out["compile"] = True
        elif name == "graphs":
            out.update(cuda_graphs=a.graph_batch, graph_bucket=a.bucket,
                       graph_streams=int(arg or 1))
        elif name == "streams":
            out["model_streams"] = int(arg or 2)
        else:
            raise SystemExit(f"unknown configuration {part!r}: eager, cudnn, compiled, "
                             f"graphs[:S], streams[:S]")
    return out


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2), "mean_ms": round(float(a.mean()), 2)}


def measure(bundle, serving: ServingSection, config: str, a, texts: list[str],
            student: bool) -> tuple[dict[str, Any], np.ndarray]:
    """One configuration: timings and the blended scores of ``texts``."""
    from aes_core.serving.loader import torch_scorer

    t0 = time.perf_counter()
    scorer = torch_scorer(bundle, serving, student=student, **overrides(config, a))
    load_s = time.perf_counter() - t0
    try:
        requests = [texts[i:i + a.batch] for i in range(0, len(texts), a.batch)]
        for r in requests[:WARMUP_REQUESTS]:
            scorer.predict_request(r)
        scorer.clock.take()
        total, device, rows = [], [], []
        for r in requests[WARMUP_REQUESTS:]:
            t1 = time.perf_counter()
            rows.append(scorer.predict_request(r))
            total.append((time.perf_counter() - t1) * 1e3)
            device.append(scorer.clock.take().get("device", 0.0) * 1e3)
        preds = np.vstack(rows)
        timed = texts[WARMUP_REQUESTS * a.batch:]
        r = {"config": config, "scorer": scorer.description, "load_s": round(load_s, 1),
             "graphed": scorer.graphed, "graph_error": scorer.graph_error or None,
             "compile_error": scorer.compile_error or None,
             "request": percentiles(total), "device": percentiles(device),
             "essays_per_s": round(len(timed) / (sum(total) / 1e3), 1)}
        if a.per_model:
            r["per_model_ms"] = per_model(scorer, requests[-1])
        return r, scorer.ensemble.blend(preds, timed)
    finally:
        scorer.close()


def per_model(scorer, texts: list[str], repeats: int = 3) -> dict[str, float]:
    """ms of each fold model alone on one padded batch of ``texts`` (best of ``repeats``;
    the device is synchronized around each), by member name and fold index."""
    import torch

    from aes_core.models.tokens import collate

    out = {}
    for g in scorer.groups:
        batch = collate(g.encoder.windows(texts), g.encoder.pad_id, g.plan.chunking)
        ids, mask, weights = scorer._tensors(batch)
        forwards = scorer._forwards(g, weights, scorer.compiled)
        for k, (m, forward) in enumerate(zip(g.models, forwards, strict=True)):
            best = float("inf")
            for _ in range(repeats):
                if scorer.cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with scorer._forward_context():
                    forward(ids, mask)
                if scorer.cuda:
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            out[f"{scorer.ensemble.members[m.column]}#{k}"] = round(best * 1e3, 3)
    return out


def agreement(blended: np.ndarray, ref: np.ndarray, ensemble) -> dict[str, float]:
    return {"max_abs_blended_diff": float(np.abs(blended - ref).max()),
            "rounded_scores_changed_fraction": float(np.mean(
                ensemble.to_scores(blended) != ensemble.to_scores(ref)))}


def plot(report: dict[str, Any], path: Path) -> None:
    """p50 / p99 of the request and of its device stage, per configuration and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aes_core.report import save_figure

    models = [m for m in ("ensemble", "student") if report.get(m)]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = report[model]
        x = np.arange(len(rows))
        for k, (part, stat, shade) in enumerate((("request", "p50_ms", "#2b6cb0"),
                                                 ("request", "p99_ms", "#90cdf4"),
                                                 ("device", "p50_ms", "#38a169"),
                                                 ("device", "p99_ms", "#9ae6b4"))):
            vals = [r[part][stat] for r in rows]
            ax.bar(x + (k - 1.5) * 0.2, vals, 0.2, color=shade,
                   label=f"{part} {stat.split('_')[0]}")
        ax.set_xticks(x, [r["config"] for r in rows])
        ax.set_ylabel(f"ms per request of {report['batch']} essay(s)")
        ax.set_title(f"{model}: {report['batch']} essay(s) per request, in process")
        ax.legend(fontsize=8)
    save_figure(fig, path, f"{report['gpu']} | {report['hardware'].get('cpu', '')}", dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    import torch

    from aes_core.serving.manifest import Bundle

    hw = hardware()
    print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()), flush=True)
    bundle = Bundle.load(a.bundle)
    texts = pd.read_csv(a.data)["full_text"].astype(str).tolist()
    texts = (texts * -(-(a.requests + WARMUP_REQUESTS) * a.batch // len(texts)))[
        :(a.requests + WARMUP_REQUESTS) * a.batch]
    # no token cache: essays repeat once the requests outnumber them, and each one is timed
    # as a new essay
    serving = ServingSection(backend="torch_gpu", gbdt_workers=a.gbdt_workers,
                             token_cache_size=0)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    report: dict[str, Any] = {
        "benchmark": "single_essay_latency", "gpu": hw.get("gpu", "none"), "hardware": hw,
        "cuda": torch.cuda.is_available(), "requests": a.requests, "batch": a.batch,
        "graph_batch": a.graph_batch, "bucket": a.bucket, "configs": configs,
        "note": f"{a.batch} essay(s) per request, in process; request = tokenize + device + "
                f"GBDT wait + blend; agreement against the first configuration"}
    models = [("ensemble", False)]
    if not a.no_student and bundle.manifest.student is not None:
        models.append(("student", True))
    for label, student in models:
        rows, ref = [], None
        for config in configs:
            r, blended = measure(bundle, serving, config, a, texts, student)
            if ref is None:
                ref = blended
            ens = bundle.student_ensemble() if student else bundle.ensemble
            r["agreement"] = agreement(blended, ref, ens)
            rows.append(r)
            print(f"{label} {config:<10} request p50 {r['request']['p50_ms']:7.2f} ms  p99 "
                  f"{r['request']['p99_ms']:7.2f} ms | device p50 {r['device']['p50_ms']:7.2f}"
                  f" p99 {r['device']['p99_ms']:7.2f} | load {r['load_s']:.0f}s | "
                  f"max |d blended| {r['agreement']['max_abs_blended_diff']:.4f}", flush=True)
        report[label] = rows
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(report, indent=2))
    plot(report, out / f"{a.name}.png")
    return report


if __name__ == "__main__":
    main()
