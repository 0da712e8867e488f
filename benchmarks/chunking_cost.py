"""What reading whole essays (chunking) costs against reading their first ``max_length`` tokens.

1. Token statistics of the essays with the backbone's tokenizer: how many are longer than one
   window, their mean score against the rest, and per ``--overlaps`` value the windows per
   essay (mean, max), the share cut by ``--max-chunks`` and the tokens read relative to
   truncation (``aes_core.models.tokens``: the windows training and serving build).
2. Timing on a seeded sample of ``--timed-essays`` essays: the same regressor weights read
   them truncated and chunked (length-sorted batches of ``--batch-size`` essays,
   tokenization included, and forward only). Also checks that essays of one window score
   exactly as under truncation.

    python benchmarks/chunking_cost.py                               # shared AES2 train, CPU
    python benchmarks/chunking_cost.py --model-dir PATH --device cuda --timed-essays 2048
    python benchmarks/chunking_cost.py --tiny --out /tmp/chunk       # CI smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from aes_core.config import SAMPLE_DIR  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.models import tokens  # noqa: E402
from aes_core.models.regressor import (  # noqa: E402
    EssayRegressor,
    RegressorSpec,
    load_regressor_tokenizer,
)

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "aes2" / "train.csv.gz"


def token_stats(tok, texts: list[str], scores: np.ndarray | None, max_length: int,
                overlaps: list[int], max_chunks: int) -> dict[str, Any]:
    prefix, suffix = tokens.special_tokens(tok)
    body = max_length - len(prefix) - len(suffix)
    n = np.array([len(x) for x in tok(texts, add_special_tokens=False, verbose=False)
                  ["input_ids"]])
    long = n > body
    out: dict[str, Any] = {
        "essays": len(texts), "max_length": max_length, "essay_tokens_per_window": body,
        "essay_tokens": {"mean": float(n.mean()), "p50": float(np.median(n)),
                         "p90": float(np.percentile(n, 90)), "p99": float(np.percentile(n, 99)),
                         "max": int(n.max())},
        "truncated_fraction": float(long.mean()),
        "tokens_lost_to_truncation": float(np.maximum(n - body, 0).sum() / n.sum()),
    }
    if scores is not None:
        out["mean_score_truncated"] = float(scores[long].mean()) if long.any() else None
        out["mean_score_rest"] = float(scores[~long].mean()) if (~long).any() else None
    truncated_tokens = float((np.minimum(n, body) + len(prefix) + len(suffix)).sum())
    out["windows"] = {}
    for ov in overlaps:
        full = np.array([len(tokens.window_starts(int(k), body, ov, 10**6)) for k in n])
        w = np.minimum(full, max_chunks)
        starts = [tokens.window_starts(int(k), body, ov, max_chunks) for k in n]
        read = sum(sum(min(body, int(k) - s) for s in st) + len(st) * (len(prefix) + len(suffix))
                   for k, st in zip(n, starts, strict=True))
        out["windows"][str(ov)] = {
            "overlap": ov, "mean_windows": float(w.mean()),
            "mean_windows_of_long_essays": float(w[long].mean()) if long.any() else None,
            "max_windows_needed": int(full.max()),
            "cut_by_max_chunks_fraction": float((full > max_chunks).mean()),
            "tokens_read_vs_truncated": float(read / truncated_tokens)}
    return out


def _pass(model, batches: list[tokens.EssayBatch], order: list[np.ndarray], n: int,
          device: str) -> tuple[np.ndarray, float]:
    out = np.zeros(n, dtype=np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx, b in zip(order, batches, strict=True):
            args = [t.to(device) for t in b.tensors().values()]
            out[idx] = model(*args).float().cpu().numpy()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def timed(model, tok, texts: list[str], spec: RegressorSpec, batch_size: int,
          device: str) -> dict[str, Any]:
    """End to end (tokenize + pad + forward) and forward-only seconds for one reading."""
    t0 = time.perf_counter()
    essays = tokens.tokenize_windows(tok, texts, spec)
    order = tokens.length_sorted_batches([sum(len(w) for w in e) for e in essays], batch_size)
    batches = [tokens.collate([essays[i] for i in idx], tokens.pad_id_of(tok), spec.chunking)
               for idx in order]
    prep = time.perf_counter() - t0
    _pass(model, batches[:1], order[:1], len(texts), device)  # warm-up
    logits, fwd = _pass(model, batches, order, len(texts), device)
    return {"logits": logits, "seconds": prep + fwd, "forward_seconds": fwd,
            "windows": sum(b.input_ids.shape[0] for b in batches),
            "padded_tokens": sum(b.input_ids.size for b in batches),
            "one_window": np.array([len(e) == 1 for e in essays])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="CSV with full_text (+ score); default: the "
                    "shared AES2 train set, else the bundled sample")
    ap.add_argument("--model-dir", default=None, help="saved regressor (default: packaged "
                    "MiniLM + a mean head, random head weights: speed does not depend on them)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--overlaps", default=None, help="default 0,64,128,256 (tiny: 0,16,32,64)")
    ap.add_argument("--max-chunks", type=int, default=8)
    ap.add_argument("--timed-overlap", type=int, default=None, help="default 128 (tiny: 32)")
    ap.add_argument("--timed-essays", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny random BERT, bundled sample")
    ap.add_argument("--out", default=None, help="folder for chunking_cost.json")
    a = ap.parse_args(argv)
    a.overlaps = a.overlaps or ("0,16,32,64" if a.tiny else "0,64,128,256")
    a.timed_overlap = a.timed_overlap if a.timed_overlap is not None else (32 if a.tiny else 128)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(a.data) if a.data else (SHARED_TRAIN if SHARED_TRAIN.exists() and not a.tiny
                                        else SAMPLE_DIR / "train.csv.gz")
    df = pd.read_csv(path)
    texts = df["full_text"].astype(str).tolist()
    scores = df["score"].to_numpy(dtype=float) if "score" in df.columns else None
    hw = hardware()
    print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()), flush=True)

    work = Path(tempfile.mkdtemp(prefix="aes_chunk_"))
    if a.model_dir:
        model_dir = Path(a.model_dir)
    else:
        from aes_core.models.backbone import load_tokenizer, packaged_minilm_path
        from aes_core.models.tiny import build_tiny_bert

        bb = build_tiny_bert(work / "tiny") if a.tiny else packaged_minilm_path()
        torch.manual_seed(0)
        spec = RegressorSpec(head="mean", max_length=128 if a.tiny else a.max_length)
        model_dir = EssayRegressor.from_backbone(bb, spec).save_pretrained(
            work / "reg", load_tokenizer(bb))
    model = EssayRegressor.from_pretrained(model_dir).to(device).eval()
    tok = load_regressor_tokenizer(model_dir)
    max_length = model.spec.max_length if (a.model_dir or a.tiny) else a.max_length
    overlaps = [int(x) for x in a.overlaps.split(",")]

    report: dict[str, Any] = {"benchmark": "chunking_cost", "hardware": hw, "device": device,
                              "data": str(path), "model_dir": str(a.model_dir),
                              "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    report["tokens"] = token_stats(tok, texts, scores, max_length, overlaps, a.max_chunks)
    report["tokens"]["seconds"] = time.perf_counter() - t0
    ts = report["tokens"]
    print(f"{ts['essays']} essays, max_length {max_length}: {100 * ts['truncated_fraction']:.1f}% "
          f"longer than one window ({100 * ts['tokens_lost_to_truncation']:.1f}% of all essay "
          f"tokens cut); essay tokens {ts['essay_tokens']}", flush=True)
    if scores is not None:
        print(f"mean score: truncated {ts['mean_score_truncated']}, rest {ts['mean_score_rest']}")
    for ov, w in ts["windows"].items():
        print(f"overlap {ov:>4s}: {w['mean_windows']:.3f} windows/essay "
              f"({w['mean_windows_of_long_essays']} for long essays), max needed "
              f"{w['max_windows_needed']}, {100 * w['cut_by_max_chunks_fraction']:.2f}% cut at "
              f"{a.max_chunks}, tokens read x{w['tokens_read_vs_truncated']:.3f} of truncation")

    rng = np.random.default_rng(0)
    pick = rng.choice(len(texts), size=min(a.timed_essays, len(texts)), replace=False)
    sample = [texts[i] for i in pick]
    base = model.spec.model_copy(update={"max_length": max_length, "chunking": False})
    chunked = base.model_copy(update={"chunking": True, "chunk_overlap": a.timed_overlap,
                                      "max_chunks": a.max_chunks})
    tr = timed(model, tok, sample, base, a.batch_size, device)
    ch = timed(model, tok, sample, chunked, a.batch_size, device)
    one = ch["one_window"]
    same = (float(np.max(np.abs(tr["logits"][one] - ch["logits"][one]))) if one.any() else None)
    report["timing"] = {
        "essays": len(sample), "batch_size": a.batch_size, "overlap": a.timed_overlap,
        "max_chunks": a.max_chunks,
        "truncated": {k: v for k, v in tr.items() if k in ("seconds", "forward_seconds",
                                                           "windows", "padded_tokens")},
        "chunked": {k: v for k, v in ch.items() if k in ("seconds", "forward_seconds",
                                                         "windows", "padded_tokens")},
        "cost_ratio_end_to_end": ch["seconds"] / tr["seconds"],
        "cost_ratio_forward": ch["forward_seconds"] / tr["forward_seconds"],
        "one_window_essays": int(one.sum()),
        "one_window_max_abs_logit_diff": same,
    }
    t = report["timing"]
    print(f"timed {len(sample)} essays on {device} ({torch.get_num_threads()} threads), batch "
          f"{a.batch_size}: truncated {tr['seconds']:.2f}s ({tr['windows']} windows), chunked "
          f"{ch['seconds']:.2f}s ({ch['windows']} windows): cost x{t['cost_ratio_end_to_end']:.2f}"
          f" end to end, x{t['cost_ratio_forward']:.2f} forward only; {t['one_window_essays']} "
          f"one-window essays differ by at most {same}", flush=True)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "chunking_cost.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
