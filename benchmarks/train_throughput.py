"""Training throughput of backbone + head on the hardware it runs on (tokens/s, s per epoch).

Needs only aes_core + torch / transformers / lightning / pydantic / pandas / yaml (no Dagster,
no MLflow), so it runs on a GPU host without the rest of the stack::

    python benchmarks/train_throughput.py                       # packaged MiniLM, max length 512
    python benchmarks/train_throughput.py --backbone PATH/TO/minilm --batch-size 32
    python benchmarks/train_throughput.py --tiny --steps 3      # CI smoke run on CPU
    python benchmarks/train_throughput.py --batch-size 128 --steps 30 --profile-steps 10

It trains one epoch (or ``--warmup`` + ``--steps`` optimizer steps, then ``--profile-steps``
under torch.profiler: wall time per step against device-busy time, and the costliest host
operators) on real essays with the project's Lightning
module (dynamic padding, AdamW groups, warmup schedule, AMP bf16 on GPU), times the steps after
``--warmup`` steps, and extrapolates seconds per epoch and a full 5-fold x 4-head two-stage run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from aes_core.config import SAMPLE_DIR, HeadSection, TrainSection  # noqa: E402
from aes_core.models.backbone import load_tokenizer, packaged_minilm_path  # noqa: E402
from aes_core.models.regressor import EssayRegressor, RegressorSpec  # noqa: E402
from aes_core.training.datamodule import EssayDataset, train_loader  # noqa: E402
from aes_core.training.module import RegressorModule, prepare_encoder  # noqa: E402


class StepTimer(pl.Callback):
    """Wall time and tokens of the optimizer steps after ``warmup`` (until ``stop`` steps
    are done, if given: later steps are profiled)."""

    def __init__(self, warmup: int, stop: int | None = None):
        self.warmup, self.stop, self.t0, self.tokens, self.steps = warmup, stop, None, 0, 0
        self.secs: float | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.secs is not None:
            return
        if self.stop is not None and trainer.global_step >= self.stop:
            self.secs = self.seconds()
            return
        if trainer.global_step == self.warmup and self.t0 is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        if self.t0 is not None:
            self.tokens = self.tokens + batch["attention_mask"].sum()  # on the device: no sync
            self.steps += 1

    def seconds(self) -> float:
        if self.secs is not None:
            return self.secs
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - self.t0 if self.t0 else float("nan")


class StepProfile(pl.Callback):
    """torch.profiler over ``steps`` optimizer steps after the warm-up: wall time per step
    against the time the device was busy (kernels) and the host operators that cost most."""

    def __init__(self, warmup: int, steps: int, top: int = 12):
        self.warmup, self.steps, self.top = warmup, steps, top
        self.prof, self.seen, self.t0, self.result = None, 0, 0.0, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.prof is None and self.result is None and trainer.global_step >= self.warmup:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.prof is None:
            return
        self.seen += 1
        if self.seen < self.steps:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        self.prof = None
        # kernels only: a host operator also carries the time of the kernels it launched
        busy_us = sum(e.self_device_time_total for e in events
                      if e.device_type != torch.autograd.DeviceType.CPU
                      and not getattr(e, "is_user_annotation", False))
        host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:self.top]
        self.result = {
            "steps": self.seen, "wall_ms_per_step": round(wall / self.seen * 1e3, 2),
            "device_busy_ms_per_step": round(busy_us / self.seen / 1e3, 2),
            "device_busy_pct": round(100 * busy_us / 1e6 / wall, 1),
            "top_host_ops_ms_per_step": {
                e.key: round(e.self_cpu_time_total / self.seen / 1e3, 3) for e in host},
            "note": "under the profiler (host times inflated); compare with tokens_per_s"}


def build_tiny(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    tok = load_tokenizer(packaged_minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def device_name(accelerator: str) -> str:
    if accelerator == "gpu":
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", help="HF folder (default: packaged MiniLM-L6)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random BERT (CI smoke test)")
    ap.add_argument("--data", default=str(SAMPLE_DIR / "train.csv.gz"),
                    help="CSV with full_text, score")
    ap.add_argument("--essays", type=int, default=None, help="cap on essays (default: all)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--head", default="mean")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps after the warm-up (default: the rest of one epoch)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    ap.add_argument("--precision", default="auto", help="auto | 32-true | bf16-mixed | 16-mixed")
    ap.add_argument("--freeze-layers", type=int, default=0)
    ap.add_argument("--full-run-essays", type=int, default=5397,
                    help="train size for the full-run estimate (shared AES2 train)")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="profile this many steps after the warm-up (host vs device time)")
    ap.add_argument("--no-fused", action="store_true", help="AdamW without its fused kernel")
    args = ap.parse_args(argv)

    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = args.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") \
            if accelerator == "gpu" else "32-true"
    tmp = tempfile.mkdtemp(prefix="aes_bench_")
    path = build_tiny(Path(tmp)) if args.tiny else Path(args.backbone or packaged_minilm_path())
    df = pd.read_csv(args.data, keep_default_na=False)
    if args.essays:
        df = df.head(args.essays)
    tok = load_tokenizer(path)
    cfg = TrainSection(batch_size=args.batch_size, freeze_layers=args.freeze_layers,
                       freeze_embeddings=args.freeze_layers > 0, warmup_ratio=0.1,
                       fused_optimizer=not args.no_fused)
    spec = RegressorSpec(head=args.head, heads_cfg=HeadSection(), max_length=args.max_length)
    model = EssayRegressor.from_backbone(path, spec, vocab_size=len(tok))
    prepare_encoder(model, cfg)
    ds = EssayDataset(df["full_text"].tolist(), tok, args.max_length,
                      ((df["score"].astype(float) - 1) / 5).tolist())
    # profiled steps come after the timed ones: the profiler slows the host down
    timer = StepTimer(args.warmup, (args.warmup + args.steps) if args.steps else None)
    profile = StepProfile(args.warmup + (args.steps or 0), args.profile_steps)
    callbacks = [timer] + ([profile] if args.profile_steps else [])
    max_steps = (args.warmup + args.steps + args.profile_steps) if args.steps else -1
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision,
                         max_epochs=1, max_steps=max_steps, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, callbacks=callbacks)
    model.train()
    trainer.fit(RegressorModule(model, cfg), train_loader(ds, tok, args.batch_size, 0))
    secs = timer.seconds()
    tps = float(timer.tokens) / secs if secs and secs == secs else float("nan")
    epoch_tokens = ds.n_tokens
    sec_per_epoch = epoch_tokens / tps
    # 5 folds x 4 heads; stage 1: 4 epochs on 4/5 of train, stage 2: 2 epochs on the flag-1
    # share (35%) of it (the gpu-full profile); inference passes are a small extra
    per_essay = sec_per_epoch / len(ds)
    full = 20 * per_essay * args.full_run_essays * 0.8 * (4 + 2 * 0.35)
    out = {"device": device_name(accelerator), "precision": precision,
           "backbone": str(path) if not args.tiny else "tiny random BERT",
           "max_length": args.max_length, "batch_size": args.batch_size, "essays": len(ds),
           "mean_tokens_per_essay": round(epoch_tokens / len(ds), 1),
           "timed_steps": timer.steps, "timed_seconds": round(secs, 3),
           "tokens_per_s": round(tps, 1), "seconds_per_epoch": round(sec_per_epoch, 2),
           "full_run_estimate_min": round(full / 60, 2),
           "fused_optimizer": cfg.fused_optimizer}
    if profile.result:
        out["profile"] = profile.result
        print(f"profile: {json.dumps(profile.result)}")
    print(f"device: {out['device']} ({precision})")
    print(f"tokens/s: {out['tokens_per_s']:.0f}  seconds/epoch ({len(ds)} essays, max length "
          f"{args.max_length}): {out['seconds_per_epoch']:.1f}")
    print(f"estimated 5-fold x 4-head two-stage training on {args.full_run_essays} essays: "
          f"{out['full_run_estimate_min']:.1f} min (training steps only)")
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
