"""Build a scorer from a serving bundle, through Triton when it can, in-process otherwise.

This is the one place that chooses between the Triton server and the in-process scorer (both
give the same scores: same tokenization, fold averaging and blending). In process,
``serving.backend`` picks PyTorch (``torch_gpu``: CUDA with bf16, CPU fp32 without CUDA) or ONNX
Runtime (``onnx_cpu``); ``auto`` = PyTorch where CUDA is available. ``serving.scorer: student``
scores with the bundle's distilled student instead of the ensemble (Triton model ``student``,
or in process), with the ensemble's thresholds. Everything comes from the bundle
(``serving.bundle_dir``), never from pipeline storage::

    bundle = load_bundle(cfg)
    with open_scorer(bundle, cfg.serving, start_server=True) as choice:
        scored = score_frame(choice.scorer, essays_df)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aes_core.config import AesConfig, ServingSection
from aes_core.serving.base import Scorer
from aes_core.serving.manifest import STUDENT_MEMBER, Bundle, BundleError
from aes_core.serving.onnx_scorer import OnnxScorer
from aes_core.serving.torch_scorer import TORCH_GPU, resolve_backend

log = logging.getLogger(__name__)
IN_PROCESS = "onnxruntime (in-process)"
STUDENT_MODEL = "student"

ScorerNotReady = BundleError  # the name callers used for "nothing materialized yet"


def load_bundle(where: AesConfig | str | Path) -> Bundle:
    """The bundle of a configuration (``cfg.bundle_dir``) or at a folder / manifest path."""
    return Bundle.load(where.bundle_dir if isinstance(where, AesConfig) else where)


def torch_scorer(bundle: Bundle, serving: ServingSection, student: bool = False,
                 show_progress: bool = False, device: str | None = None, **overrides):
    """A ``TorchScorer`` of the bundle's ensemble (or its student) with ``serving``'s options;
    ``overrides`` replace single options (e.g. ``dtype="fp32"``)."""
    from aes_core.serving.token_cache import TokenCache
    from aes_core.serving.torch_scorer import TorchScorer

    if student:
        ensemble, members, gbdt = (bundle.student_ensemble(),
                                   {STUDENT_MEMBER: [bundle.student_dir]}, None)
    else:
        ensemble, members, gbdt = bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir
    opts = dict(batch_size=serving.request_batch_size, dtype=serving.torch_dtype,
                compile=serving.torch_compile == "always",
                gpu_batch_size=serving.gpu_batch_size,
                chars_per_token=serving.pretruncate_chars_per_token,
                word_cache=serving.tokenizer_word_cache,
                gbdt_workers=serving.gbdt_workers, tokenizer_workers=serving.tokenizer_workers,
                threads=serving.torch_threads, tokenizer_threads=serving.tokenizer_threads,
                cudnn_attention=serving.cudnn_attention, cuda_graphs=serving.cuda_graphs,
                graph_bucket=serving.cuda_graph_bucket, graph_streams=serving.cuda_graph_streams,
                model_streams=serving.model_streams,
                token_cache=TokenCache(serving.token_cache_size, serving.token_cache_dir))
    opts.update(overrides)
    return TorchScorer(ensemble, members, gbdt, device=device, show_progress=show_progress,
                       **opts)


def in_process_scorer(bundle: Bundle, serving: ServingSection,
                      show_progress: bool = False) -> Scorer:
    """The in-process scorer ``serving`` asks for: the student or the ensemble, with PyTorch
    (``backend`` torch_gpu, or auto on a CUDA host) or ONNX Runtime."""
    if serving.scorer == "student":
        return torch_scorer(bundle, serving, student=True, show_progress=show_progress)
    if resolve_backend(serving.backend) == TORCH_GPU:
        return torch_scorer(bundle, serving, show_progress=show_progress)
    return OnnxScorer(bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir,
                      batch_size=serving.request_batch_size,
                      intra_op_threads=serving.ort_threads, show_progress=show_progress)


def in_process_label(scorer: Scorer) -> str:
    """``via`` of an in-process scorer: ONNX Runtime, or torch with its device and dtype."""
    desc = getattr(scorer, "description", None)
    return f"{desc} (in-process)" if desc else IN_PROCESS


@dataclass
class ScorerChoice:
    """The scorer in use, how it scores (``via``) and why Triton was not used (if it was not);
    ``metrics_url``: the Triton server's Prometheus endpoint when it scores through one."""

    scorer: Scorer
    via: str
    fallback_reason: str = ""
    metrics_url: str | None = None
    model: str = "scorer"

    def metrics(self) -> dict:
        """The server's counters now ({} in process, or when they cannot be read)."""
        if not self.metrics_url:
            return {}
        from aes_core.serving.stage_clock import scrape

        try:
            return scrape(self.metrics_url)
        except (OSError, ValueError) as e:  # unreachable, refused, not Prometheus text
            log.info(f"no scorer metrics at {self.metrics_url}: {e}")
            return {}

    def stages_since(self, before: dict) -> dict:
        """Where the scoring since ``metrics()`` returned ``before`` spent its time: ms per
        request per stage from the server, or seconds per stage of an in-process scorer that
        times its stages ({} when neither is known)."""
        from aes_core.serving.stage_clock import stage_breakdown

        if self.metrics_url:
            got = stage_breakdown(before, self.metrics(), self.model)
            return got if got.get("requests") else {}
        clock = getattr(self.scorer, "clock", None)
        if clock is None:
            return {}
        return {f"{k}_s": round(v, 3) for k, v in clock.take().items()}


def _triton_repo_matches(repo: str | Path, bundle: Bundle) -> str | None:
    """None when ``repo`` was generated from this bundle, else why not."""
    from aes_core.export.triton_repo import repo_bundle_version

    found = repo_bundle_version(repo)
    if found is None:
        return f"{repo} is not a generated model repository: materialize triton_repo"
    if found != bundle.version():
        return (f"{repo} was generated for another bundle ({found}, current "
                f"{bundle.version()}): materialize triton_repo")
    return None


@contextlib.contextmanager
def open_scorer(bundle: Bundle, serving: ServingSection, start_server: bool = False,
                triton_url: str | None = None, show_progress: bool = False,
                logger: logging.Logger | None = None,
                keep_open: bool = False) -> Iterator[ScorerChoice]:
    """Score through Triton when ``serving.use_triton`` and a server is usable, else in-process.

    A server is usable when one answers at ``triton_url`` / ``serving.triton_url`` and serves
    this bundle's members, or (``start_server``) when the bundled ``tritonserver`` starts on
    ``serving.triton_repo`` generated from this bundle. Any failure falls back, with the
    reason in ``fallback_reason`` (and a warning). An in-process scorer is closed on exit
    (its GBDT worker processes, its token cache) unless ``keep_open``.
    """
    from aes_core.serving.triton import TritonError, TritonScorer, TritonServer, server_ready

    logger = logger or log
    url = triton_url or serving.triton_url
    reason = "serving.use_triton is false"
    student = serving.scorer == "student"
    model = STUDENT_MODEL if student else "scorer"
    ensemble = bundle.student_ensemble() if student else bundle.ensemble
    with contextlib.ExitStack() as stack:
        scorer, metrics_url = None, None
        if serving.use_triton:
            try:
                if url:
                    if not server_ready(url):
                        raise TritonError(f"no Triton server answers at {url}")
                    scorer = TritonScorer(url, ensemble, batch_size=serving.request_batch_size,
                                          model=model, bundle_version=bundle.version())
                    metrics_url = f"http://{url.rsplit(':', 1)[0]}:{serving.metrics_port}/metrics"
                elif start_server:
                    mismatch = _triton_repo_matches(serving.triton_repo, bundle)
                    if mismatch:
                        raise TritonError(mismatch)
                    server = stack.enter_context(TritonServer(
                        serving.triton_repo, http_port=serving.http_port,
                        grpc_port=serving.grpc_port, metrics_port=serving.metrics_port,
                        startup_timeout_s=serving.startup_timeout_s,
                        binary=serving.triton_binary))
                    url, metrics_url = server.url, server.metrics_url
                    scorer = TritonScorer(url, ensemble, batch_size=serving.request_batch_size,
                                          client=server.client(), model=model,
                                          bundle_version=bundle.version())
                else:
                    reason = "no Triton server configured (serving.triton_url)"
            except TritonError as e:
                reason = str(e).splitlines()[0]
                logger.warning(f"Triton unavailable, scoring in-process instead: {e}")
                scorer = None
        if scorer is not None:
            yield ScorerChoice(scorer, f"triton ({url}, model {model})",
                               metrics_url=metrics_url, model=model)
            return
        local = in_process_scorer(bundle, serving, show_progress)
        try:
            yield ScorerChoice(local, in_process_label(local), reason)
        finally:
            if hasattr(local, "close") and not keep_open:
                local.close()


def load_scorer(cfg: AesConfig, prefer_triton: bool = False,
                triton_url: str | None = None) -> Scorer:
    """A long-lived scorer for the teachers' page: Triton at ``triton_url`` when
    ``prefer_triton`` and it answers with this bundle's members, else in-process."""
    bundle = load_bundle(cfg)
    use = prefer_triton and cfg.serving.use_triton
    serving = cfg.serving.model_copy(update={"use_triton": use})
    url = triton_url or cfg.serving.triton_url or f"127.0.0.1:{cfg.serving.http_port}"
    with open_scorer(bundle, serving, triton_url=url, keep_open=True) as choice:
        return choice.scorer
