"""In-process PyTorch scorer: the bundle's fold models on one device (CUDA, else CPU).

Members that read essays the same way (one backbone: same tokenizer and token plan) form a
group: a request is tokenized once per group (``TokenEncoder``: the fast backend call, the
token cache), copied to the device once, and every fold model of every member of the group
runs on that same batch. Fold logits stay on the device, stacked, and come back with one copy
per group and request; folds are averaged and members blended on the host with the same
NumPy code as the ONNX scorer.

On CUDA: bf16 autocast (``serving.torch_dtype``), SDPA attention, optionally
``torch.compile`` (one compiled graph per model architecture, shared by every fold model of
that architecture through ``torch.func.functional_call``). On CPU: fp32, no autocast — the same
code; it matches the ONNX scorer within 1e-4 (tests). A request larger than
``gpu_batch_size`` essays is length-sorted by tokens and cut into batches of that size
padded to their own longest essay; a request that fits is one batch padded like the ONNX
scorer's, so every path sees the same padding (this matters for the BiLSTM head).

Requests of at most ``cuda_graphs`` essays replay CUDA graphs of every fold model of a group
(``aes_core.serving.cuda_graphs``): one essay alone is bound by kernel launches, not by the GPU.

The GBDT member runs on the host; with ``gbdt_workers`` it runs in worker processes while the
device works on the transformer members.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.members import GBDT_MEMBER
from aes_core.models.backbone import use_cudnn_attention
from aes_core.models.spec import BACKBONE_DIR, RegressorSpec, load_spec
from aes_core.models.tokens import (
    WORD_CACHE,
    EssayBatch,
    TokenEncoder,
    TokenPlan,
    collate,
    length_sorted_batches,
    text_batches,
)
from aes_core.serving.base import require_fold_models
from aes_core.serving.cuda_graphs import (
    GraphShapes,
    GroupGraphs,
    capture_hint,
    error_chain,
    forward_on_streams,
)
from aes_core.serving.onnx_scorer import fold_average
from aes_core.serving.stage_clock import StageClock
from aes_core.serving.token_cache import CachedEncoder, TokenCache

log = logging.getLogger(__name__)
ONNX_CPU, TORCH_GPU = "onnx_cpu", "torch_gpu"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``torch_gpu`` where CUDA is available, else ``onnx_cpu``."""
    if backend == "auto":
        return TORCH_GPU if cuda_available() else ONNX_CPU
    if backend not in (ONNX_CPU, TORCH_GPU):
        raise ValueError(f"serving.backend: unknown backend {backend!r}; use auto, onnx_cpu "
                         f"or torch_gpu")
    return backend


def resolve_device(device: str | None = None) -> str:
    """``None``/``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if device in (None, "", "auto"):
        return "cuda" if cuda_available() else "cpu"
    return device


def parallel_tokenizer(threads: int) -> None:
    """Let HF's Rust tokenizer encode batches on ``threads`` threads in this process (its
    thread pool reads RAYON_NUM_THREADS when first used; TOKENIZERS_PARALLELISM switches the
    parallel batch path on)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ["RAYON_NUM_THREADS"] = str(threads)


def usable_cudnn() -> bool:
    """Whether torch can use the cuDNN loaded in this process; if not, turn cuDNN off so the
    models still run (inside ``tritonserver`` an older cuDNN 9.x bundled with the server can
    be loaded first, and torch then refuses LSTM heads). LSTMs then step through the tokens on
    native kernels, which is much slower (~0.9 s a request for 5 LSTM folds on an H200)."""
    import torch

    try:
        torch.backends.cudnn.version()
        return True
    except RuntimeError as e:
        log.warning("cuDNN off for this scorer (%s): LSTM heads run on native CUDA kernels",
                    str(e).split(".")[0])
        torch.backends.cudnn.enabled = False
        return False


@contextmanager
def forward_context(device_type: str, amp_dtype=None, graph: bool = False) -> Iterator[None]:
    """What every fold-model forward runs in: inference mode and autocast to ``amp_dtype``
    (None: fp32); a graph's casts are made inside it (no weight cache)."""
    import torch

    with torch.inference_mode(), torch.autocast(
            device_type=device_type, dtype=amp_dtype or torch.float32,
            enabled=amp_dtype is not None, cache_enabled=not graph):
        yield


@dataclass
class _Model:
    """One fold model: its column in the ensemble, its loss, the module (and its weights)."""

    column: int
    loss: str
    module: object
    arch: str
    params: dict = field(default_factory=dict)
    fn: object = None


@dataclass
class MemberGroup:
    """Fold models that share a tokenizer and token plan: one tokenization per request."""

    encoder: CachedEncoder
    tokenizer_dir: Path
    spec: RegressorSpec
    models: list[_Model]
    columns: list[int]
    graphs: GroupGraphs | None = None

    @property
    def plan(self) -> TokenPlan:
        return self.encoder.plan


def _gbdt_init(folder: str) -> None:
    from aes_core.ensemble.gbdt import GbdtMember

    _GBDT["member"] = GbdtMember.load(folder).warm_up()


def _gbdt_predict(texts: list[str]) -> np.ndarray:
    return np.asarray(_GBDT["member"].predict(texts), dtype=np.float64).reshape(-1)


_GBDT: dict = {}


class TorchScorer:
    """Implements ``aes_core.serving.base.Scorer`` with the PyTorch fold models.

    ``members`` maps each transformer member to its fold folders (regressor folders:
    ``model.safetensors``, ``aes_model.json``, ``backbone/``); ``gbdt_dir`` is the GBDT member
    folder when the ensemble has ``gbdt``. ``device``: ``cuda``, ``cuda:1``, ``cpu`` or None
    (CUDA when available). ``dtype``, ``compile``, ``cudnn_attention`` (see
    :func:`use_cudnn_attention`) and ``cuda_graphs`` (requests of at most that many essays
    replay graphs captured at load for lengths in steps of ``graph_bucket``, their fold models
    on ``graph_streams`` streams; 0 = off) and ``model_streams`` (larger requests: the fold
    models on that many streams) apply on CUDA only; ``threads`` sets
    torch's CPU threads for the whole process (0 = leave them); ``tokenizer_threads`` > 1
    lets the Rust tokenizer encode a request's essays on that many threads (process-wide:
    it must be set before the process first tokenizes in parallel).
    """

    def __init__(self, ensemble: EnsembleArtifact, members: dict[str, list[str | Path]],
                 gbdt_dir: str | Path | None = None, batch_size: int = 16,
                 device: str | None = None, dtype: str = "bf16", compile: bool = False,
                 gpu_batch_size: int = 128, token_cache: TokenCache | None = None,
                 chars_per_token: float = 0.0, word_cache: int = WORD_CACHE,
                 gbdt_workers: int = 0,
                 tokenizer_workers: int = 0, compile_backend: str = "inductor",
                 threads: int = 0, tokenizer_threads: int = 0, show_progress: bool = False,
                 cudnn_attention: bool = False, cuda_graphs: int = 0, graph_bucket: int = 32,
                 graph_streams: int = 1, model_streams: int = 1):
        import torch

        if threads:
            torch.set_num_threads(threads)
        if tokenizer_threads > 1:
            parallel_tokenizer(tokenizer_threads)
        self.ensemble = ensemble
        self.batch_size = batch_size
        self.gpu_batch_size = gpu_batch_size
        self.device = torch.device(resolve_device(device))
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is not None:
            torch.cuda.set_device(self.device)  # kernels (compiled ones too) on this GPU
        if self.cuda:
            usable_cudnn()
            use_cudnn_attention(cudnn_attention)
        self.model_streams = ([torch.cuda.Stream(self.device) for _ in range(model_streams)]
                              if self.cuda and model_streams > 1 else [])
        if dtype not in ("bf16", "fp32"):
            raise ValueError(f"dtype must be bf16 or fp32, got {dtype!r}")
        self.amp_dtype = torch.bfloat16 if (self.cuda and dtype == "bf16") else None
        self.show_progress = show_progress
        self.clock = StageClock()  # tokenize / device / gbdt seconds (served as metrics)
        self.tokenizer_workers = tokenizer_workers
        self.token_cache = token_cache
        require_fold_models(ensemble, members)
        t0 = time.perf_counter()
        self.groups = self._load_groups(members, chars_per_token, word_cache)
        self.compiled = False
        self.compile_error = ""
        if compile and self.cuda:
            self._compile(compile_backend)
        elif compile and compile_backend != "inductor":  # CPU: only a capture check (tests)
            self._compile(compile_backend)
        self.graph_error = ""
        if cuda_graphs and self.cuda:
            self.capture_graphs(cuda_graphs, graph_bucket, graph_streams)
        self.load_seconds = time.perf_counter() - t0
        self.gbdt = None
        self.gbdt_workers = gbdt_workers
        self._gbdt_pool: ProcessPoolExecutor | None = None
        if GBDT_MEMBER in ensemble.members:
            if gbdt_dir is None:
                raise ValueError("the ensemble has a 'gbdt' member but no gbdt_dir was given")
            if gbdt_workers:
                import multiprocessing as mp

                self._gbdt_pool = ProcessPoolExecutor(
                    gbdt_workers, mp_context=mp.get_context("spawn"), initializer=_gbdt_init,
                    initargs=(str(gbdt_dir),))
            else:
                from aes_core.ensemble.gbdt import GbdtMember

                self.gbdt = GbdtMember.load(gbdt_dir).warm_up()

    # ------------------------------------------------------------------ loading
    def _load_groups(self, members: dict[str, list[str | Path]],
                     chars_per_token: float, word_cache: int) -> list[MemberGroup]:
        from transformers import AutoTokenizer

        from aes_core.models.regressor import EssayRegressor

        groups: dict[tuple, MemberGroup] = {}
        for j, name in enumerate(self.ensemble.members):
            if name == GBDT_MEMBER:
                continue
            for folder in map(Path, members[name]):
                spec = load_spec(folder)
                tok_dir = folder / BACKBONE_DIR
                key = (spec.backbone_name, TokenPlan.of(spec), _tokenizer_id(tok_dir))
                if key not in groups:
                    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
                    enc = TokenEncoder(tok, spec, chars_per_token, word_cache)
                    groups[key] = MemberGroup(CachedEncoder(enc, self.token_cache), tok_dir,
                                              spec, [], [])
                model = EssayRegressor.from_pretrained(folder)
                _use_sdpa(model)
                model.to(self.device).eval()
                # what a compiled graph bakes in: spec, encoder config, weight shapes
                arch = (spec.model_dump_json() + model.encoder.config.to_json_string()
                        + repr(sorted((k, tuple(v.shape))
                                      for k, v in model.state_dict().items())))
                g = groups[key]
                g.models.append(_Model(column=j, loss=spec.loss, module=model, arch=arch))
                if j not in g.columns:
                    g.columns.append(j)
        return list(groups.values())

    def _compile(self, backend: str) -> None:
        """One compiled function per architecture, the weights passed in (shared graphs)."""
        import torch
        from torch.func import functional_call

        fns: dict[str, object] = {}
        archs = {m.arch for g in self.groups for m in g.models}
        # one code object serves every architecture: room for each one's graphs
        dyn = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, limit, max(getattr(dyn, limit), 16 * len(archs)))
        for g in self.groups:
            for m in g.models:
                if m.arch not in fns:
                    template = m.module

                    def run(state, ids, mask, weights, _t=template):
                        return functional_call(_t, state, (ids, mask, weights))

                    fns[m.arch] = torch.compile(run, dynamic=True, backend=backend)
                m.params = {**dict(m.module.named_parameters()),
                            **dict(m.module.named_buffers())}
                m.fn = fns[m.arch]
        try:  # compile now (the dynamic graph, and batch 1: one essay), not in a request
            for g in self.groups:
                for n in (3, 2, 1):
                    batch = g.encoder.encoder.batch(["warm up " * (4 * n)] * n)
                    self._group_logits(g, batch, compiled=True)
            self.compiled = True
        except Exception as e:  # noqa: BLE001 - eager still works: say why and carry on
            self.compile_error = f"{type(e).__name__}: {e}".splitlines()[0]
            log.warning(f"torch.compile failed, scoring eagerly: {self.compile_error}")
            self.compiled = False

    def capture_graphs(self, max_batch: int, bucket: int, streams: int = 1) -> None:
        """Graphs of every group that reads one window per essay, for requests of at most
        ``max_batch`` essays (on a CPU: the same padded forward, nothing captured). A group
        whose capture fails stays eager and ``graph_error`` says why; the others keep theirs."""
        errors = []
        for g in self.groups:
            if g.plan.chunking:
                continue
            try:
                shapes = GraphShapes(max_batch, bucket, g.plan.max_length)
                g.graphs = GroupGraphs(self._forwards(g), shapes, self.device,
                                       g.encoder.pad_id,
                                       lambda: self._forward_context(graph=True), streams)
                log.info(f"captured {len(g.graphs)} graphs of {len(g.models)} fold models in "
                         f"{g.graphs.capture_seconds:.1f}s")
            except Exception as e:  # noqa: BLE001 - eager still works: say why and carry on
                g.graphs = None
                error = error_chain(e)
                label = f"{g.spec.backbone_name} ({len(g.models)} fold models)"
                errors.append(error if len(self.groups) == 1 else f"{label}: {error}")
                hint = capture_hint(error)
                log.warning(f"CUDA graph capture failed for {label}, scoring them eagerly: "
                            f"{error}" + (f" ({hint})" if hint else ""))
        self.graph_error = "; ".join(errors)

    @property
    def graphed(self) -> bool:
        return any(g.graphs is not None for g in self.groups)

    @property
    def description(self) -> str:
        kind = "bf16" if self.amp_dtype is not None else "fp32"
        return (f"torch {self.device} {kind}" + (" compiled" if self.compiled else "")
                + (" graphs" if self.graphed else ""))

    @property
    def n_models(self) -> int:
        return sum(len(g.models) for g in self.groups)

    # ------------------------------------------------------------------ scoring
    def _tensors(self, batch: EssayBatch) -> list:
        import torch

        out = []
        for a in (batch.input_ids, batch.attention_mask, batch.window_weights):
            if a is None:
                out.append(None)
                continue
            t = torch.from_numpy(a)
            if self.cuda:
                t = t.pin_memory().to(self.device, non_blocking=True)
            out.append(t)
        return out

    def _forward_context(self, graph: bool = False) -> AbstractContextManager[None]:
        return forward_context(self.device.type, self.amp_dtype, graph)

    def _group_logits(self, g: MemberGroup, batch: EssayBatch, compiled: bool | None = None):
        """[K, B] fold-model logits (float32) of one padded batch, on the device."""

        if g.graphs is not None and batch.window_weights is None:
            out = g.graphs.run(batch.input_ids, batch.attention_mask)
            if out is not None:
                return out
        compiled = self.compiled if compiled is None else compiled
        ids, mask, weights = self._tensors(batch)
        with self._forward_context():
            return forward_on_streams(self._forwards(g, weights, compiled), ids, mask,
                                      self.model_streams)

    def _forwards(self, g: MemberGroup, weights=None, compiled: bool = False) -> list:
        """One ``(input_ids, attention_mask) -> logits`` callable per fold model of ``g``: the
        compiled graph with the model's weights, or the module itself."""
        if compiled:
            return [lambda i, k, _m=m: _m.fn(_m.params, i, k, weights) for m in g.models]
        return [lambda i, k, _m=m: _m.module(i, k, weights) for m in g.models]

    def _group_scores(self, g: MemberGroup, windows: list, batch: EssayBatch | None = None
                      ) -> np.ndarray:
        """[B, len(g.columns)] fold-averaged scores of a request (essays in request order)."""
        import torch

        n = len(windows) if batch is None else batch.n_essays
        if batch is not None or n <= self.gpu_batch_size:
            batch = batch or collate(windows, g.encoder.pad_id, g.plan.chunking)
            logits = self._group_logits(g, batch).cpu().numpy()
        else:
            lengths = [sum(len(w) for w in e) for e in windows]
            dev = torch.empty((len(g.models), n), dtype=torch.float32, device=self.device)
            for idx in length_sorted_batches(lengths, self.gpu_batch_size):
                b = collate([windows[i] for i in idx], g.encoder.pad_id, g.plan.chunking)
                dev[:, torch.from_numpy(idx).to(self.device)] = self._group_logits(g, b)
            logits = dev.cpu().numpy()
        out = np.zeros((n, len(g.columns)), dtype=np.float64)
        for c, j in enumerate(g.columns):
            rows = [k for k, m in enumerate(g.models) if m.column == j]
            out[:, c] = fold_average([logits[k] for k in rows], g.models[rows[0]].loss)
        return out

    def _gbdt_start(self, texts: list[str]) -> list[Future] | None:
        """Submit the GBDT member's essays to the worker processes (split among them)."""
        if GBDT_MEMBER not in self.ensemble.members or not texts or self._gbdt_pool is None:
            return None
        n = -(-len(texts) // self.gbdt_workers)
        return [self._gbdt_pool.submit(_gbdt_predict, texts[i:i + n])
                for i in range(0, len(texts), n)]

    def _gbdt_finish(self, texts: list[str], started: list[Future] | None) -> np.ndarray:
        if started is not None:
            return np.concatenate([f.result() for f in started])
        return np.asarray(self.gbdt.predict(texts), dtype=np.float64).reshape(-1)

    def predict_request(self, texts: Sequence[str]) -> np.ndarray:
        """[n, M] for one request: one tokenization per group, every fold model on it."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.ensemble.members)), dtype=np.float64)
        if not texts:
            return out
        started = self._gbdt_start(texts)
        for g in self.groups:
            out[:, g.columns] = self._timed_group(g, texts)
        self._gbdt_column(texts, started, out)
        return out

    def _timed_group(self, g: MemberGroup, texts: list[str]) -> np.ndarray:
        with self.clock.stage("tokenize"):
            windows = g.encoder.windows(texts)
        with self.clock.stage("device"):
            return self._group_scores(g, windows)

    def _gbdt_column(self, texts: list[str], started: list[Future] | None,
                     out: np.ndarray) -> None:
        """The GBDT member's column (what is left of its work once the device is done)."""
        if GBDT_MEMBER in self.ensemble.members:
            with self.clock.stage("gbdt_wait"):
                out[:, self.ensemble.members.index(GBDT_MEMBER)] = self._gbdt_finish(texts,
                                                                                     started)

    def predict_members(self, texts: list[str]) -> np.ndarray:
        """[N, M] fold-averaged member predictions; batches of ``batch_size`` essays sorted by
        length (the ONNX scorer's and the Triton client's batches)."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.ensemble.members)), dtype=np.float64)
        if not texts:
            return out
        batches = text_batches(texts, self.batch_size)
        started = self._gbdt_start(texts)
        if self.tokenizer_workers and len(batches) > 1:
            self._predict_pipelined(texts, batches, out)
        else:
            it = batches
            if self.show_progress:
                from tqdm.auto import tqdm

                it = tqdm(batches, desc=f"scoring ({self.description})", leave=False)
            for idx in it:
                chunk = [texts[i] for i in idx]
                for g in self.groups:
                    out[np.ix_(idx, g.columns)] = self._timed_group(g, chunk)
        self._gbdt_column(texts, started, out)
        return out

    def _predict_pipelined(self, texts: list[str], batches: list[np.ndarray],
                           out: np.ndarray) -> None:
        """Tokenizer processes run ahead of the device (one pool per group)."""
        from aes_core.serving.parallel_tokenize import ParallelTokenizer

        for g in self.groups:
            with ParallelTokenizer(g.tokenizer_dir, g.spec, self.tokenizer_workers,
                                   chars_per_token=g.encoder.encoder.chars_per_token,
                                   word_cache=g.encoder.encoder.word_cache) as pool:
                done = pool.map([[texts[i] for i in idx] for idx in batches])
                for idx, batch in zip(batches, done, strict=True):
                    out[np.ix_(idx, g.columns)] = self._group_scores(g, [], batch)

    def close(self) -> None:
        if self._gbdt_pool is not None:
            self._gbdt_pool.shutdown(wait=True, cancel_futures=True)
            self._gbdt_pool = None
        if self.token_cache is not None:
            self.token_cache.close()


def _tokenizer_id(folder: Path) -> str:
    """Tokenizers in different folders with the same files are the same tokenizer."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.glob("*")):
        if f.is_file() and f.name != "config.json":
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _use_sdpa(model) -> None:
    """PyTorch's fused attention where the backbone supports it (else its default)."""
    enc = model.encoder
    try:
        if hasattr(enc, "set_attn_implementation"):
            enc.set_attn_implementation("sdpa")
        else:
            enc.config._attn_implementation = "sdpa"
    except Exception as e:  # noqa: BLE001 - a backbone without SDPA keeps its attention
        log.info(f"SDPA attention unavailable for {type(enc).__name__}: {e}")
