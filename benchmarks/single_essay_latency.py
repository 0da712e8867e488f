"""One essay per request, in process: where a single essay's latency goes on the GPU, with and
without CUDA graphs.

For each configuration a ``TorchScorer`` of the bundle (the ensemble, and the student when the
bundle has one) scores ``--essays`` essays one request each, each essay seen for the first
time; it reports p50 / p99 / max of the whole request and of its device stage, the time to
load (and capture), and how far each configuration's blended scores are from the first
configuration's (max |difference|, fraction of changed 1..6 scores).

Configurations (``--configs``, comma-separated): ``eager``; ``cudnn`` (SDPA may use cuDNN's
attention); ``compiled`` (torch.compile); ``graphs`` or ``graphs:S`` (CUDA graphs for requests
of up to ``--graph-batch`` essays, lengths in steps of ``--bucket``, fold models on S
streams). On a CPU nothing is captured, so ``graphs`` is eager there (a smoke run).

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

WARMUP_ESSAYS = 3  # scored before the timed ones (first calls load kernels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a serving bundle folder (manifest.json)")
    ap.add_argument("--data", required=True, help="essays (essay_id, full_text)")
    ap.add_argument("--essays", type=int, default=200, help="timed essays, one request each")
    ap.add_argument("--configs", default="eager,graphs,graphs:4")
    ap.add_argument("--graph-batch", type=int, default=4, help="largest request in graphs")
    ap.add_argument("--bucket", type=int, default=32, help="graph length step (tokens)")
    ap.add_argument("--gbdt-workers", type=int, default=4)
    ap.add_argument("--no-student", action="store_true", help="the ensemble only")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return ap.parse_args(argv)


def overrides(config: str, a: argparse.Namespace) -> dict[str, Any]:
    """``TorchScorer`` options of one configuration name."""
    name, _, arg = config.partition(":")
    if name == "eager":
        return {}
    if name == "cudnn":
        return {"cudnn_attention": True}
    if name == "compiled":
        return {"compile": True}
    if name == "graphs":
        return {"cuda_graphs": a.graph_batch, "graph_bucket": a.bucket,
                "graph_streams": int(arg or 1)}
    raise SystemExit(f"unknown configuration {config!r}: eager, cudnn, compiled, graphs[:S]")


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
        for t in texts[:WARMUP_ESSAYS]:
            scorer.predict_request([t])
        scorer.clock.take()
        total, device, rows = [], [], []
        for t in texts[WARMUP_ESSAYS:]:
            t1 = time.perf_counter()
            rows.append(scorer.predict_request([t]))
            total.append((time.perf_counter() - t1) * 1e3)
            device.append(scorer.clock.take().get("device", 0.0) * 1e3)
        preds = np.vstack(rows)
        r = {"config": config, "scorer": scorer.description, "load_s": round(load_s, 1),
             "graphed": scorer.graphed, "graph_error": scorer.graph_error or None,
             "compile_error": scorer.compile_error or None,
             "request": percentiles(total), "device": percentiles(device)}
        return r, scorer.ensemble.blend(preds, texts[WARMUP_ESSAYS:])
    finally:
        scorer.close()


def agreement(blended: np.ndarray, ref: np.ndarray, ensemble) -> dict[str, float]:
    return {"max_abs_blended_diff": float(np.abs(blended - ref).max()),
            "rounded_scores_changed_fraction": float(np.mean(
                ensemble.to_scores(blended) != ensemble.to_scores(ref)))}


def plot(report: dict[str, Any], path: Path) -> None:
    """p50 / p99 of the request and of its device stage, per configuration and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.set_ylabel("ms, one essay per request")
        ax.set_title(f"{model}: one essay, in process")
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['gpu']} | {report['hardware'].get('cpu', '')}"[:120], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    import torch

    from aes_core.serving.manifest import Bundle

    hw = hardware()
    print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()), flush=True)
    bundle = Bundle.load(a.bundle)
    texts = pd.read_csv(a.data)["full_text"].astype(str).tolist()[:a.essays + WARMUP_ESSAYS]
    serving = ServingSection(backend="torch_gpu", gbdt_workers=a.gbdt_workers)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    report: dict[str, Any] = {
        "benchmark": "single_essay_latency", "gpu": hw.get("gpu", "none"), "hardware": hw,
        "cuda": torch.cuda.is_available(), "essays": len(texts) - WARMUP_ESSAYS,
        "graph_batch": a.graph_batch, "bucket": a.bucket, "configs": configs,
        "note": "one essay per request, in process; request = tokenize + device + GBDT wait "
                "+ blend; agreement against the first configuration"}
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
    (out / "single_essay_gpu.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "single_essay_gpu.png")
    return report


if __name__ == "__main__":
    main()
