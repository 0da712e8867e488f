"""Inference throughput, text in -> score out, tokenization included, on this machine's hardware.

Every path turns the same essays into 1..6 scores and is timed end to end (tokenization,
batching/padding, host->device copy, forward, scores back on the host):

1. ``naive_fp32_pad512``        HF eager attention, fp32, every batch tokenized and padded to
                                ``max_length`` (512) by the fast tokenizer, fixed batches.
2. ``bf16_sdpa_pad512``         bf16 autocast + SDPA attention, otherwise as 1.
3. ``bf16_sdpa_dynamic_sorted`` bf16 + SDPA; the whole list tokenized once (no padding),
                                length-sorted batches padded to their longest essay (rounded up
                                to ``--pad-multiple``).
4. ``bf16_sdpa_dynamic_compiled`` as 3 through ``torch.compile(dynamic=True)`` (CUDA only);
                                warm-up excluded from the timing, compile time reported.
5. ``bf16_packed``              as 3, but essays packed first-fit-decreasing into rows of
                                ``max_length`` tokens with a block-diagonal SDPA mask and
                                per-essay position ids; ``--batch-sizes`` counts packed rows.
5b. ``bf16_mp_pipelined``       bf16 + SDPA; essays length-sorted by characters and tokenized
                                per batch in ``--tok-workers`` processes
                                (``aes_core.serving.parallel_tokenize``) while the GPU scores
                                the batches already tokenized: tokenization overlaps the model.
5c. ``bf16_mp_pipelined_compiled`` as 5b through ``torch.compile(dynamic=True)`` (CUDA only).
5d. ``gpu_forward_only``        NOT end to end: bf16 + SDPA forward over batches tokenized,
                                padded and copied to the device before the clock starts; the
                                accelerator's own ceiling for this model and data.
5e. ``gpu_forward_only_compiled`` as 5d through ``torch.compile`` (CUDA only).
6. ``onnxruntime``              ``aes_core.export.onnx.export_onnx`` (fp32), best provider
                                (CUDA if present, else CPU), dynamic padding, sorted.
7. ``tensorrt``                 fp16 engine from the same ONNX (``aes_core.export.tensorrt``),
                                only where ``import tensorrt`` works and CUDA is available.

Scores of every path are compared with the naive fp32 path (always computed as the reference):
fraction of identical rounded 1..6 scores, and max |score - reference|. Tokenizer-only
essays/s is reported separately: it is the ceiling of any end-to-end path.

On a GPU host (the repo is the CWD)::

    python benchmarks/inference_throughput.py --model-dir PATH/TO/regressor \
        --data DATA/aes2/test.csv.gz --out results/

CPU smoke run (seconds; CUDA-only paths are skipped with their reason)::

    python benchmarks/inference_throughput.py --tiny --out /tmp/inf
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["TOKENIZERS_PARALLELISM"] = "true"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from aes_core.hardware import hardware  # noqa: E402
from aes_core.models import tokens  # noqa: E402
from aes_core.models.tiny import build_tiny_bert  # noqa: E402

ALL_PATHS = ["naive_fp32_pad512", "bf16_sdpa_pad512", "bf16_sdpa_dynamic_sorted",
             "bf16_sdpa_dynamic_compiled", "bf16_packed", "bf16_mp_pipelined",
             "bf16_mp_pipelined_compiled", "gpu_forward_only", "gpu_forward_only_compiled",
             "onnxruntime", "tensorrt"]
REFERENCE = "naive_fp32_pad512"
RUN_ORDER = ["naive_fp32_pad512", "bf16_sdpa_pad512", "bf16_sdpa_dynamic_sorted", "bf16_packed",
             "bf16_mp_pipelined", "gpu_forward_only", "onnxruntime",
             "bf16_sdpa_dynamic_compiled", "bf16_mp_pipelined_compiled",
             "gpu_forward_only_compiled", "tensorrt"]
# paths whose essays/s exclude tokenization (drawn dashed in the plot)
NOT_END_TO_END = {"gpu_forward_only", "gpu_forward_only_compiled"}
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- model / data setup

def prepare_model_dir(args, work: Path) -> tuple[Path, str]:
    """A saved regressor folder: --model-dir, else a fresh one (weights do not change speed)."""
    from aes_core.models.backbone import load_tokenizer, packaged_minilm_path
    from aes_core.models.regressor import EssayRegressor, RegressorSpec

    if args.model_dir:
        return Path(args.model_dir), f"saved regressor {args.model_dir}"
    if args.tiny:
        bb = build_tiny_bert(work / "tiny_bert")
        desc = "tiny random BERT (2 layers, hidden 32, max_length 128) + mean head"
    else:
        bb = packaged_minilm_path()
        desc = f"fresh regressor on packaged MiniLM ({bb}) + mean head (untrained head)"
    torch.manual_seed(0)
    # --tiny pads to 128 ("pad512" = pad to the model's max_length) so CPU runs take seconds
    spec = RegressorSpec(head="mean", max_length=128 if args.tiny else 512)
    model = EssayRegressor.from_backbone(bb, spec)
    folder = work / "regressor"
    model.save_pretrained(folder, tokenizer=load_tokenizer(bb))
    return folder, desc


def load_texts(args) -> tuple[list[str], str, int]:
    import pandas as pd

    if args.data:
        path = Path(args.data)
    else:
        shared = Path("/work/shared/data/aes2/test.csv.gz")
        path = shared if shared.exists() else ROOT / "data/sample/test.csv.gz"
    df = pd.read_csv(path)
    if "full_text" not in df.columns:
        raise SystemExit(f"{path}: no full_text column (columns: {list(df.columns)})")
    uniq = [str(t) for t in df["full_text"].tolist()]
    if not uniq:
        raise SystemExit(f"{path}: no essays")
    reps = -(-args.n_essays // len(uniq))
    return (uniq * reps)[:args.n_essays], str(path), len(uniq)


# ---------------------------------------------------------------- helpers

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _gpu_used_mib(device: str) -> float | None:
    if device != "cuda":
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def set_attention(model, impl: str) -> str:
    """Switch the encoder's attention implementation; returns what it actually uses."""
    enc = model.encoder
    try:
        if hasattr(enc, "set_attn_implementation"):
            enc.set_attn_implementation(impl)
        else:
            enc.config._attn_implementation = impl
    except Exception as e:  # noqa: BLE001 - backbone without this implementation
        print(f"  (attention {impl!r} not supported: {e}; keeping "
              f"{enc.config._attn_implementation!r})")
    return str(getattr(enc.config, "_attn_implementation", "unknown"))


def collate(input_ids: list[list[int]], idx: np.ndarray, pad_id: int, multiple: int,
            cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad one batch to its longest essay, rounded up to ``multiple`` (at most ``cap``)."""
    ids, mask = tokens.pad_batch([input_ids[i] for i in idx], pad_id, multiple, cap)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def pack_rows(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit-decreasing: essay indices per row, each row's total length <= capacity."""
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = int(lengths[i])
        for r, f in enumerate(free):
            if f >= n:
                rows[r].append(int(i))
                free[r] -= n
                break
        else:
            rows.append([int(i)])
            free.append(capacity - n)
    return rows


# ---------------------------------------------------------------- one timed pass per path

class PassLog:
    """Bookkeeping every pass shares: its wall clock, per-batch latency, real vs padded tokens
    and device memory in use."""

    def __init__(self, device: str):
        self.device = device
        self.lat: list[float] = []
        self.used: list[float | None] = []
        self.real = self.padded = 0
        self.t0 = time.perf_counter()

    def batch_done(self, b0: float, real: int, padded: int) -> None:
        """A batch's scores are on the host: wait for the device and record the batch."""
        _sync(self.device)
        self.lat.append(time.perf_counter() - b0)
        self.real += real
        self.padded += padded
        self.used.append(_gpu_used_mib(self.device))

    def result(self, to_scores: Callable[[np.ndarray], np.ndarray], out: np.ndarray) -> dict:
        wall = time.perf_counter() - self.t0
        return dict(scores=to_scores(out), wall=wall, lat=self.lat, real=self.real,
                    padded=self.padded, used=self.used)


class Runner:
    """Everything one pass needs; each ``pass_*`` returns scores in essay order + stats."""

    def __init__(self, model, tok, spec, device: str, pad_multiple: int):
        self.model, self.tok, self.spec, self.device = model, tok, spec, device
        self.max_len = spec.max_length
        self.pad_id = tokens.pad_id_of(tok)
        self.pad_multiple = pad_multiple

    def encode(self, texts: list[str]) -> list[list[int]]:
        return tokens.tokenize(self.tok, texts, self.spec)

    def encode_with_lengths(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        input_ids = self.encode(texts)
        return input_ids, np.fromiter((len(x) for x in input_ids), dtype=np.int64,
                                      count=len(input_ids))

    def _to_scores(self, logits: np.ndarray) -> np.ndarray:
        from aes_core.models.regressor import logits_to_scores

        return logits_to_scores(torch.from_numpy(logits.astype(np.float32)),
                                self.spec.loss).numpy().astype(np.float64)

    def _autocast(self, bf16: bool):
        dt = self.device if self.device in ("cuda", "cpu") else "cpu"
        return torch.autocast(device_type=dt, dtype=torch.bfloat16, enabled=bf16)

    def _h2d(self, t: torch.Tensor) -> torch.Tensor:
        if self.device == "cuda":
            return t.pin_memory().to("cuda", non_blocking=True)
        return t

    # -- 1, 2: tokenizer pads every fixed batch to max_length
    @torch.inference_mode()
    def pass_pad_fixed(self, texts: list[str], bs: int, bf16: bool, fwd) -> dict:
        from aes_core.models.backbone import encode_newlines

        out = np.zeros(len(texts), dtype=np.float32)
        log = PassLog(self.device)
        for s in range(0, len(texts), bs):
            b0 = time.perf_counter()
            chunk = texts[s:s + bs]
            if self.spec.add_newline_tokens:
                chunk = [encode_newlines(t, True) for t in chunk]
            enc = self.tok(chunk, truncation=True, max_length=self.max_len,
                           padding="max_length", return_tensors="pt")
            ids, mask = self._h2d(enc["input_ids"]), self._h2d(enc["attention_mask"])
            with self._autocast(bf16):
                logits = fwd(ids, mask)
            out[s:s + bs] = logits.float().cpu().numpy()
            log.batch_done(b0, int(enc["attention_mask"].sum()), enc["input_ids"].numel())
        return log.result(self._to_scores, out)

    # -- 3, 4, 6, 7: whole list tokenized once, sorted batches, dynamic padding
    @torch.inference_mode()
    def pass_sorted(self, texts: list[str], bs: int, run_batch: Callable) -> dict:
        out = np.zeros(len(texts), dtype=np.float32)
        log = PassLog(self.device)
        input_ids, lengths = self.encode_with_lengths(texts)
        for idx in tokens.length_sorted_batches(lengths, bs):
            b0 = time.perf_counter()
            ids, mask = collate(input_ids, idx, self.pad_id, self.pad_multiple, self.max_len)
            out[idx] = run_batch(ids, mask)
            log.batch_done(b0, int(lengths[idx].sum()), ids.numel())
        return log.result(self._to_scores, out)

    # -- 5b, 5c: batches tokenized in worker processes while the device scores earlier ones
    @torch.inference_mode()
    def pass_pipelined(self, texts: list[str], bs: int, pool, run_batch: Callable) -> dict:
        out = np.zeros(len(texts), dtype=np.float32)
        log = PassLog(self.device)
        batches = tokens.text_batches(texts, bs)
        encoded = pool.map([[texts[i] for i in idx] for idx in batches])
        for idx, b in zip(batches, encoded, strict=True):
            b0 = time.perf_counter()  # latency from "tokens ready" to "scores on host"
            out[idx] = run_batch(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))
            log.batch_done(b0, int(b.attention_mask.sum()), b.input_ids.size)
        return log.result(self._to_scores, out)

    # -- 5d: forward only, inputs already on the device
    def device_batches(self, texts: list[str], bs: int) -> list[tuple]:
        input_ids, lengths = self.encode_with_lengths(texts)
        out = []
        for idx in tokens.length_sorted_batches(lengths, bs):
            ids, mask = collate(input_ids, idx, self.pad_id, self.pad_multiple, self.max_len)
            out.append((idx, self._h2d(ids), self._h2d(mask), int(lengths[idx].sum())))
        _sync(self.device)
        return out

    @torch.inference_mode()
    def pass_device_only(self, n: int, batches: list[tuple], fwd) -> dict:
        logits_all, order = [], []
        log = PassLog(self.device)
        for idx, ids, mask, n_real in batches:
            b0 = time.perf_counter()
            with self._autocast(True):
                logits_all.append(fwd(ids, mask).float())
            log.batch_done(b0, n_real, ids.numel())
            order.append(idx)
        out = np.zeros(n, dtype=np.float32)
        out[np.concatenate(order)] = torch.cat(logits_all).cpu().numpy()
        return log.result(self._to_scores, out)

    def torch_batch(self, fwd, bf16: bool) -> Callable:
        def run(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
            with self._autocast(bf16):
                logits = fwd(self._h2d(ids), self._h2d(mask))
            return logits.float().cpu().numpy()

        return run

    # -- 5: packed rows, block-diagonal SDPA mask, per-essay positions, unpacked for the head
    @torch.inference_mode()
    def pass_packed(self, texts: list[str], rows_per_batch: int) -> dict:
        dev = self.device
        enc_model, head = self.model.encoder, self.model.head
        k = max(1, int(getattr(head, "needs_layers", 1)))
        out = np.zeros(len(texts), dtype=np.float32)
        log = PassLog(dev)
        input_ids, lengths = self.encode_with_lengths(texts)
        rows = pack_rows(lengths, self.max_len)
        for s in range(0, len(rows), rows_per_batch):
            b0 = time.perf_counter()
            brows = rows[s:s + rows_per_batch]
            width = tokens.round_up(max(int(lengths[r].sum()) for r in brows),
                                    self.pad_multiple, self.max_len)
            B = len(brows)
            ids = np.full((B, width), self.pad_id, dtype=np.int64)
            pos = np.zeros((B, width), dtype=np.int64)
            seg = np.full((B, width), -1, dtype=np.int64)  # essay slot per token, -1 = pad
            essays, starts = [], []
            for r, row in enumerate(brows):
                off = 0
                for slot, i in enumerate(row):
                    n = int(lengths[i])
                    ids[r, off:off + n] = input_ids[i]
                    pos[r, off:off + n] = np.arange(n)
                    seg[r, off:off + n] = slot
                    essays.append(i)
                    starts.append((r, off, n))
                    off += n
            seg_t = self._h2d(torch.from_numpy(seg))
            same = seg_t[:, :, None] == seg_t[:, None, :]
            real_tok = seg_t >= 0
            attn = same & real_tok[:, :, None] & real_tok[:, None, :]
            attn |= torch.eye(width, dtype=torch.bool, device=attn.device)[None]  # no empty rows
            attn = attn[:, None]  # [B, 1, T, T] bool, True = attend
            with self._autocast(True):
                hs = enc_model(input_ids=self._h2d(torch.from_numpy(ids)), attention_mask=attn,
                               position_ids=self._h2d(torch.from_numpy(pos)),
                               output_hidden_states=True, return_dict=True).hidden_states
                n_es, lmax = len(essays), max(n for _, _, n in starts)
                gidx = np.zeros((n_es, lmax), dtype=np.int64)
                gmask = np.zeros((n_es, lmax), dtype=np.int64)
                for e, (r, off, n) in enumerate(starts):
                    gidx[e, :n] = r * width + off + np.arange(n)
                    gmask[e, :n] = 1
                gidx_t = self._h2d(torch.from_numpy(gidx))
                gmask_t = self._h2d(torch.from_numpy(gmask))
                unpacked = tuple(h.reshape(B * width, -1)[gidx_t] for h in hs[-k:])
                logits = head(unpacked, gmask_t)
            out[np.asarray(essays)] = logits.float().cpu().numpy()
            log.batch_done(b0, int(lengths[essays].sum()), B * width)
        return log.result(self._to_scores, out)


# ---------------------------------------------------------------- ORT / TensorRT batch fns

def ort_session(onnx_path: Path, device: str, threads: int | None = None):
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" in avail:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
    return sess, sess.get_providers(), avail


def ort_batch(sess) -> Callable:
    def run(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        return sess.run(["logits"], {"input_ids": ids.numpy(),
                                     "attention_mask": mask.numpy()})[0]

    return run


def trt_batch(plan_path: Path) -> Callable:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
    ctx = engine.create_execution_context()
    dt = {trt.int32: torch.int32, trt.float32: torch.float32, trt.float16: torch.float16}
    if hasattr(trt, "int64"):
        dt[trt.int64] = torch.int64

    def run(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        keep = []
        for name, t in (("input_ids", ids), ("attention_mask", mask)):
            g = t.to("cuda", dtype=dt[engine.get_tensor_dtype(name)]).contiguous()
            ctx.set_input_shape(name, tuple(g.shape))
            ctx.set_tensor_address(name, g.data_ptr())
            keep.append(g)
        shape = tuple(ctx.get_tensor_shape("logits"))
        out = torch.empty(shape, dtype=dt[engine.get_tensor_dtype("logits")], device="cuda")
        ctx.set_tensor_address("logits", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 returned False")
        return out.float().reshape(-1).cpu().numpy()

    return run


# ---------------------------------------------------------------- measurement

def compare(scores: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    r1 = np.clip(np.rint(scores), 1, 6)
    r2 = np.clip(np.rint(ref), 1, 6)
    return {"identical_rounded_fraction": float(np.mean(r1 == r2)),
            "score_max_abs_diff": float(np.max(np.abs(scores - ref))),
            "n_compared": int(len(ref))}


def measure(name: str, bs: int, texts: list[str], run_pass: Callable[[], dict], repeats: int,
            device: str, ref: np.ndarray | None, warmup: Callable[[], Any] | None) -> dict:
    row: dict[str, Any] = {"path": name, "batch_size": bs, "status": "ok", "n_essays": len(texts)}
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    w0 = time.perf_counter()
    if warmup is not None:
        warmup()
    _sync(device)
    row["warmup_s"] = time.perf_counter() - w0
    runs = [run_pass() for _ in range(repeats)]
    walls = [r["wall"] for r in runs]
    lat_ms = np.asarray([x for r in runs for x in r["lat"]]) * 1e3
    used = [u for r in runs for u in r["used"] if u is not None]
    row.update(
        essays_per_s=float(len(texts) / np.median(walls)),
        essays_per_s_best=float(len(texts) / np.min(walls)),
        wall_s=[float(w) for w in walls],
        p50_ms=float(np.percentile(lat_ms, 50)), p99_ms=float(np.percentile(lat_ms, 99)),
        n_batches=len(runs[0]["lat"]),
        padding_efficiency=float(runs[0]["real"] / max(1, runs[0]["padded"])),
        peak_gpu_mib=(float(torch.cuda.max_memory_allocated() / 2**20)
                      if device == "cuda" else None),
        gpu_used_mib_max=float(max(used)) if used else None,
    )
    scores = runs[0]["scores"]
    row["_scores"] = scores
    if ref is not None:
        row.update(compare(scores, ref))
    return row


def tokenizer_only(runner: Runner, texts: list[str], batch_sizes: list[int],
                   repeats: int) -> dict[str, Any]:
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.encode(texts)
        walls.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"whole_list_essays_per_s": float(len(texts) / np.median(walls)),
                           "per_batch_pad512_essays_per_s": {}}
    for bs in batch_sizes:
        t0 = time.perf_counter()
        for s in range(0, len(texts), bs):
            runner.tok(texts[s:s + bs], truncation=True, max_length=runner.max_len,
                       padding="max_length", return_tensors="pt")
        out["per_batch_pad512_essays_per_s"][str(bs)] = float(len(texts) /
                                                              (time.perf_counter() - t0))
    return out


def plot(results: list[dict], tok: dict, out_png: Path, title: str,
         parallel: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in ALL_PATHS:
        pts = sorted((r["batch_size"], r["essays_per_s"]) for r in results
                     if r["path"] == name and r["status"] == "ok")
        if pts:
            dashed = name in NOT_END_TO_END
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    ls="--" if dashed else "-",
                    label=f"{name} (no tokenization)" if dashed else name)
    ax.axhline(tok["whole_list_essays_per_s"], color="grey", ls="--",
               label="tokenizer only (whole list, one process, HF threads)")
    if parallel:
        ax.axhline(parallel["essays_per_s"], color="black", ls=":",
                   label=f"tokenizer only ({parallel['workers']} processes)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (bf16_packed: packed rows)")
    ax.set_ylabel("essays/s end to end (incl. tokenization)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="saved EssayRegressor folder")
    ap.add_argument("--data", default=None, help="CSV/CSV.gz with full_text")
    ap.add_argument("--n-essays", type=int, default=None, help="default 8192 (--tiny: 32)")
    ap.add_argument("--batch-sizes", default=None, help="default 32,64,128,256,512 (tiny: 4,8)")
    ap.add_argument("--paths", default=",".join(RUN_ORDER),
                    help="comma list, measured in this order (compile/TensorRT builds last)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes (default 3, tiny 1)")
    ap.add_argument("--pad-multiple", type=int, default=16)
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                    help="torch.compile mode (or reduce-overhead / default)")
    ap.add_argument("--cpu-max-essays", type=int, default=256,
                    help="on a CUDA machine, CPU-only paths (ORT CPU) use at most this many")
    ap.add_argument("--path-budget-s", type=float, default=150.0,
                    help="after this many seconds in one path, its remaining batch sizes skip")
    ap.add_argument("--time-budget-s", type=float, default=540.0,
                    help="after this many seconds overall, remaining measurements skip")
    ap.add_argument("--device", default=None, help="cuda/cpu (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch/ORT CPU threads (default: library default; --tiny: 1, since "
                         "spinning OpenMP threads on a busy small CPU cost 100x)")
    ap.add_argument("--tok-workers", type=int, default=None,
                    help="tokenizer processes of the bf16_mp_pipelined paths (default: cores-1)")
    ap.add_argument("--tok-chunk", type=int, default=32,
                    help="essays per tokenizer task of the pipelined paths (a batch is split)")
    ap.add_argument("--tiny", action="store_true", help="tiny random BERT, CPU smoke run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    args.n_essays = args.n_essays or (32 if args.tiny else 8192)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    batch_sizes = [int(b) for b in (args.batch_sizes or
                                    ("4,8" if args.tiny else "32,64,128,256,512")).split(",")]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in ALL_PATHS]
    if unknown:
        raise SystemExit(f"unknown paths {unknown}; known: {ALL_PATHS}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.threads = args.threads or (1 if args.tiny else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aes_inf_"))

    from aes_core.models.regressor import EssayRegressor, load_regressor_tokenizer

    hw = hardware()
    print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()), flush=True)
    model_dir, model_desc = prepare_model_dir(args, work)
    texts, data_path, n_unique = load_texts(args)
    model = EssayRegressor.from_pretrained(model_dir).eval().to(device)
    tok = load_regressor_tokenizer(model_dir)
    spec = model.spec
    if spec.chunking:
        raise SystemExit(f"{model_dir} reads essays in windows (chunking): these paths measure "
                         f"truncating models; benchmarks/chunking_cost.py compares both")
    runner = Runner(model, tok, spec, device, args.pad_multiple)
    print(f"model: {model_desc}; head={spec.head} max_length={spec.max_length}; data: "
          f"{data_path} ({n_unique} unique essays -> {len(texts)}); device={device}", flush=True)

    _, lengths = runner.encode_with_lengths(texts)
    token_stats = {"mean": float(lengths.mean()), "p50": float(np.median(lengths)),
                   "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max()),
                   "truncated_fraction": float(np.mean(lengths >= spec.max_length))}
    tok_stats = tokenizer_only(runner, texts, batch_sizes, args.repeats)
    print(f"tokens/essay: {token_stats}\ntokenizer only: "
          f"{tok_stats['whole_list_essays_per_s']:.0f} essays/s (whole list, "
          f"TOKENIZERS_PARALLELISM=true, {os.cpu_count()} cores)", flush=True)

    results: list[dict] = []
    skipped: dict[str, str] = {}
    info: dict[str, dict] = {}

    def fwd_eager(ids, mask):
        return model(ids, mask)

    # reference: naive fp32 eager pad512, always computed (timed row only if selected)
    attn_ref = set_attention(model, "eager")
    info[REFERENCE] = {"attention": attn_ref, "dtype": "fp32"}
    ref_scores: np.ndarray | None = None
    if paths[0] != REFERENCE:  # else the first timed naive pass gives the reference
        ref_scores = runner.pass_pad_fixed(texts, batch_sizes[0], False, fwd_eager)["scores"]

    def over_budget(name: str, t_path: float) -> str | None:
        if time.perf_counter() - t_start > args.time_budget_s:
            return f"overall time budget {args.time_budget_s:.0f}s exhausted"
        if time.perf_counter() - t_path > args.path_budget_s:
            return f"path time budget {args.path_budget_s:.0f}s exhausted"
        return None

    for name in paths:
        t_path = time.perf_counter()
        try:
            plan = build_path(name, args, runner, texts, batch_sizes, device, model_dir, work,
                              lengths, info)
        except Exception as e:  # noqa: BLE001 - a broken path must not end the benchmark
            traceback.print_exc()
            plan = f"setup failed: {type(e).__name__}: {e}"
        if isinstance(plan, str):
            skipped[name] = plan
            print(f"[skip] {name}: {plan}", flush=True)
            continue
        path_texts, make_pass, make_warmup = plan
        for bs in batch_sizes:
            why = over_budget(name, t_path)
            if why:
                results.append({"path": name, "batch_size": bs, "status": "skipped",
                                "reason": why})
                print(f"[skip] {name} bs={bs}: {why}", flush=True)
                continue
            try:
                ref = None if ref_scores is None else ref_scores[:len(path_texts)]
                row = measure(name, bs, path_texts, make_pass(bs), args.repeats, device, ref,
                              make_warmup(bs))
                if ref_scores is None:  # first naive pass: the reference itself
                    ref_scores = row["_scores"]
                    row.update(compare(ref_scores, ref_scores))
                row.update(info.get(name, {}))
                results.append(row)
                print(f"  {name:28s} bs={bs:4d} {row['essays_per_s']:9.1f} essays/s "
                      f"p50={row['p50_ms']:.1f}ms p99={row['p99_ms']:.1f}ms "
                      f"identical={100 * row['identical_rounded_fraction']:.2f}%", flush=True)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                results.append({"path": name, "batch_size": bs, "status": "error",
                                "reason": f"{type(e).__name__}: {e}"})
            write_report(args, out_dir, hw, device, model, model_dir, model_desc, data_path,
                         n_unique, texts, batch_sizes, paths, token_stats, tok_stats, info,
                         results, skipped, t_start, final=False)
        set_attention(model, "sdpa")

    if "tok" in _SHARED:
        _SHARED.pop("tok").close()
    _SHARED.clear()
    report = write_report(args, out_dir, hw, device, model, model_dir, model_desc, data_path,
                          n_unique, texts, batch_sizes, paths, token_stats, tok_stats, info,
                          results, skipped, t_start, final=True)
    print_table(report)
    return report


def write_report(args, out_dir: Path, hw, device, model, model_dir, model_desc, data_path,
                 n_unique, texts, batch_sizes, paths, token_stats, tok_stats, info, results,
                 skipped, t_start, final: bool) -> dict[str, Any]:
    """JSON (+ PNG when final); also written after every measurement so a killed run keeps
    what it measured."""
    spec = model.spec
    results = [{k: v for k, v in r.items() if k != "_scores"} for r in results]
    report = {
        "benchmark": "inference_throughput", "hardware": hw, "device": device,
        "model": {"dir": str(model_dir) if args.model_dir else None, "description": model_desc,
                  "head": spec.head, "loss": spec.loss, "max_length": spec.max_length,
                  "params": int(sum(p.numel() for p in model.parameters()))},
        "data": {"path": data_path, "unique_essays": n_unique, "n_essays": len(texts)},
        "config": {"batch_sizes": batch_sizes, "threads": torch.get_num_threads(),
                   "paths": paths, "repeats": args.repeats,
                   "pad_multiple": args.pad_multiple, "compile_mode": args.compile_mode,
                   "reference": REFERENCE,
                   "timing": "wall clock of one full pass: tokenization + batching/padding + "
                             "H2D + forward + scores on host (median over repeats); latency "
                             "per batch (pad512 paths include that batch's tokenization; "
                             "sorted paths tokenize the whole list once before the batches)"},
        "token_stats": token_stats, "tokenizer": tok_stats, "path_info": info,
        "results": results, "skipped": skipped,
        "versions": versions(), "total_seconds": time.perf_counter() - t_start,
        "complete": final,
    }
    png = out_dir / "inference_throughput.png"
    plot(results, tok_stats, png, f"{hw.get('gpu')} | {hw.get('cpu')} | {model_desc}"[:150],
         info.get("parallel_tokenizer"))
    report["plot"] = str(png)
    (out_dir / "inference_throughput.json").write_text(json.dumps(report, indent=2))
    return report


def versions() -> dict[str, str]:
    out = {}
    for mod in ("torch", "transformers", "tokenizers", "onnxruntime", "tensorrt"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = "not importable"
    return out


def build_path(name: str, args, runner: Runner, texts: list[str], batch_sizes: list[int],
               device: str, model_dir: Path, work: Path, lengths: np.ndarray,
               info: dict[str, dict]):
    """(texts, bs -> one-pass fn, bs -> warm-up fn) for a path, or the reason it skips."""
    model = runner.model
    cuda = device == "cuda"
    small = texts[:max(batch_sizes) * 2]

    def fwd(ids, mask):
        return model(ids, mask)

    if name == REFERENCE:
        set_attention(model, "eager")
        return (texts, lambda bs: lambda: runner.pass_pad_fixed(texts, bs, False, fwd),
                lambda bs: lambda: runner.pass_pad_fixed(small, bs, False, fwd))
    if name in ("bf16_sdpa_pad512", "bf16_sdpa_dynamic_sorted", "bf16_packed",
                "bf16_sdpa_dynamic_compiled", "bf16_mp_pipelined", "bf16_mp_pipelined_compiled",
                "gpu_forward_only", "gpu_forward_only_compiled"):
        if cuda and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
        attn = set_attention(model, "sdpa")
        info[name] = {"attention": attn, "dtype": "bf16 autocast"}
        if attn != "sdpa":
            return f"backbone does not support SDPA attention (uses {attn!r})"
    if name == "bf16_sdpa_pad512":
        return (texts, lambda bs: lambda: runner.pass_pad_fixed(texts, bs, True, fwd),
                lambda bs: lambda: runner.pass_pad_fixed(small, bs, True, fwd))
    if name == "bf16_sdpa_dynamic_sorted":
        b = runner.torch_batch(fwd, True)
        return (texts, lambda bs: lambda: runner.pass_sorted(texts, bs, b),
                lambda bs: lambda: runner.pass_sorted(small, bs, b))
    if name == "bf16_packed":
        info[name]["batch_unit"] = "packed rows of max_length tokens"
        info[name]["rows_for_all_essays"] = len(pack_rows(lengths, runner.max_len))
        return (texts, lambda bs: lambda: runner.pass_packed(texts, bs),
                lambda bs: lambda: runner.pass_packed(small, bs))
    if name in ("bf16_mp_pipelined", "bf16_mp_pipelined_compiled"):
        compiled = name.endswith("_compiled")
        if compiled and not cuda:
            return "CUDA only (torch.compile is not measured on CPU)"
        pool = _tokenizer_pool(args, runner, model_dir, texts, info)
        f = _compiled(model, args) if compiled else fwd
        b = runner.torch_batch(f, True)
        info[name].update(tokenizer_workers=pool.workers, tokenizer_chunk=pool.chunk_size,
                          sorting="by characters (no tokenizer pass before batching)")
        if compiled:
            info[name]["compile_mode"] = args.compile_mode
        return (texts, lambda bs: lambda: runner.pass_pipelined(texts, bs, pool, b),
                lambda bs: lambda: runner.pass_pipelined(texts if compiled else small, bs, pool,
                                                         b))
    if name in ("gpu_forward_only", "gpu_forward_only_compiled"):
        compiled = name.endswith("_compiled")
        if compiled and not cuda:
            return "CUDA only (torch.compile is not measured on CPU)"
        info[name]["note"] = ("not end to end: tokenized, padded and on the device before the "
                              "clock starts")
        f = _compiled(model, args) if compiled else fwd
        cache: dict[int, list] = {}

        def batches(bs: int) -> list:
            if bs not in cache:
                cache.clear()  # one batch size's tensors on the device at a time
                cache[bs] = runner.device_batches(texts, bs)
            return cache[bs]

        def warm(bs: int):
            def run():
                runner.pass_device_only(len(texts), batches(bs), f)  # compiles new shapes
            return run

        return (texts, lambda bs: lambda: runner.pass_device_only(len(texts), batches(bs), f),
                warm)
    if name == "bf16_sdpa_dynamic_compiled":
        if not cuda:
            return "CUDA only (torch.compile is not measured on CPU)"
        compiled = _compiled(model, args)
        b = runner.torch_batch(compiled, True)
        info[name]["compile_mode"] = args.compile_mode
        info[name]["compile_note"] = ("warmup_s = one untimed full pass per batch size (includes "
                                      "compilation/recompilation for new shapes)")
        return (texts, lambda bs: lambda: runner.pass_sorted(texts, bs, b),
                lambda bs: lambda: runner.pass_sorted(texts, bs, b))
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return f"onnxruntime not importable: {e}"
        from aes_core.export.onnx import export_onnx

        t0 = time.perf_counter()
        onnx_path = export_onnx(model_dir, work / "onnx")
        export_s = time.perf_counter() - t0
        sess, used, avail = ort_session(onnx_path, device, args.threads)
        on_cpu = used[0] == "CPUExecutionProvider"
        ptexts = texts[:args.cpu_max_essays] if (cuda and on_cpu) else texts
        info[name] = {"providers": used, "available_providers": avail, "dtype": "fp32",
                      "export_s": export_s, "peak_gpu_note": "ORT allocates outside torch: see "
                      "gpu_used_mib_max (device-wide used memory)"}
        if cuda and on_cpu:
            info[name]["note"] = (f"no CUDAExecutionProvider on this GPU machine; ORT runs on "
                                  f"CPU with the first {len(ptexts)} essays")
        b = ort_batch(sess)
        return (ptexts, lambda bs: lambda: runner.pass_sorted(ptexts, bs, b),
                lambda bs: lambda: runner.pass_sorted(ptexts[:bs * 2], bs, b))
    if name == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"tensorrt not importable ({type(e).__name__}: {e})"
        if not cuda:
            return "tensorrt needs CUDA (no CUDA device)"
        from aes_core.config import ExportSection
        from aes_core.export.onnx import export_onnx
        from aes_core.export.tensorrt import SeqProfile, build_engine, tensorrt_unavailable_reason

        why = tensorrt_unavailable_reason()
        if why:
            return why
        onnx_path = work / "onnx" / "model.onnx"
        if not onnx_path.exists():
            onnx_path = export_onnx(model_dir, work / "onnx")
        mb = max(batch_sizes)
        opt_len = tokens.round_up(int(np.median(lengths)), args.pad_multiple, runner.max_len)
        prof = SeqProfile(min_len=1, opt_len=opt_len, max_len=runner.max_len, min_batch=1,
                          opt_batch=mb, max_batch=mb)
        t0 = time.perf_counter()
        res = build_engine(onnx_path, work / "trt", prof, ExportSection(trt_max_batch=mb))
        if res.skipped:
            return res.reason
        info[name] = {"dtype": "fp16" if res.fp16 else "fp32", "build_s": time.perf_counter() - t0,
                      "profile": res.profile, "tensorrt_version": res.tensorrt_version}
        b = trt_batch(Path(res.plan_path))
        return (texts, lambda bs: lambda: runner.pass_sorted(texts, bs, b),
                lambda bs: lambda: runner.pass_sorted(small, bs, b))
    return f"unknown path {name}"


# expensive objects several paths share (one compiled model, one tokenizer process pool)
_SHARED: dict[str, Any] = {}


def _compiled(model, args):
    if "compiled" not in _SHARED:
        _SHARED["compiled"] = torch.compile(model, mode=args.compile_mode, dynamic=True)
    return _SHARED["compiled"]


def _tokenizer_pool(args, runner: Runner, model_dir: Path, texts: list[str],
                    info: dict[str, dict]):
    """One warmed-up ParallelTokenizer for every pipelined path; also measures its ceiling."""
    if "tok" in _SHARED:
        return _SHARED["tok"]
    from aes_core.models.regressor import BACKBONE_DIR
    from aes_core.serving.parallel_tokenize import ParallelTokenizer

    pool = ParallelTokenizer(Path(model_dir) / BACKBONE_DIR, runner.spec, args.tok_workers,
                             args.tok_chunk)
    pool.warm_up()
    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _b in pool.map([[texts[i] for i in idx] for idx in tokens.text_batches(texts, 256)]):
            pass
        walls.append(time.perf_counter() - t0)
    info["parallel_tokenizer"] = {"workers": pool.workers, "batch_size": 256,
                                  "chunk_size": pool.chunk_size,
                                  "essays_per_s": float(len(texts) / np.median(walls))}
    print(f"parallel tokenizer only: {info['parallel_tokenizer']['essays_per_s']:.0f} essays/s "
          f"({pool.workers} processes)", flush=True)
    _SHARED["tok"] = pool
    return pool


def print_table(report: dict) -> None:
    hw = report["hardware"]
    print("\nhardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()))
    tk = report["tokenizer"]
    print(f"tokenizer only: {tk['whole_list_essays_per_s']:.0f} essays/s (whole list); "
          f"mean {report['token_stats']['mean']:.0f} tokens/essay")
    print(f"{'path':28s} {'batch':>5s} {'essays/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'ident%':>7s} {'maxdiff':>8s} {'peakMiB':>8s}")
    for r in report["results"]:
        if r["status"] != "ok":
            print(f"{r['path']:28s} {r['batch_size']:5d} {r['status']}: {r['reason']}")
            continue
        pk = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        print(f"{r['path']:28s} {r['batch_size']:5d} {r['essays_per_s']:9.1f} "
              f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{100 * r['identical_rounded_fraction']:7.2f} {r['score_max_abs_diff']:8.4f} "
              f"{pk:>8s}")
    for name, why in report["skipped"].items():
        print(f"{name:28s} skipped: {why}")
    print(f"plot: {report['plot']}")


if __name__ == "__main__":
    main()
