"""TensorRT engines from the exported ONNX models (fp16, sequence-length profiles).

The optimisation profile (min/opt/max sequence length) comes from the token lengths of real
essays; batch sizes span 1..``trt_max_batch``. The build needs the ``tensorrt`` Python
package *with its builder libraries* and a CUDA GPU. Where either is missing,
:func:`build_engine` returns a result with ``skipped`` set and a reason instead of raising,
so the pipeline still runs (Triton then serves the ONNX models).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aes_core.config import ExportSection
from aes_core.models.tokens import WINDOW_WEIGHTS

PLAN_FILE = "model.plan"
INPUTS = ("input_ids", "attention_mask")


@dataclass
class SeqProfile:
    """One optimisation profile: batch and sequence ranges for both inputs."""

    min_len: int
    opt_len: int
    max_len: int
    min_batch: int
    opt_batch: int
    max_batch: int

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return ((self.min_batch, self.min_len), (self.opt_batch, self.opt_len),
                (self.max_batch, self.max_len))


def sequence_profile(token_lengths: list[int] | np.ndarray, max_length: int,
                     cfg: ExportSection) -> SeqProfile:
    """min/opt/max sequence lengths from the essays' token-length distribution.

    min = the ``trt_min_quantile`` length (0 = shortest essay), opt = the ``trt_opt_quantile``
    length, max = ``max_length`` of the model (truncation guarantees nothing is longer), all
    clipped to [1, max_length] and ordered min <= opt <= max.
    """
    lengths = np.asarray(token_lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("sequence_profile needs at least one essay length")
    if (lengths <= 0).any():
        raise ValueError(f"token lengths must be positive, got min {int(lengths.min())}")
    lengths = np.minimum(lengths, max_length)
    lo = int(np.floor(np.quantile(lengths, cfg.trt_min_quantile)))
    opt = int(np.ceil(np.quantile(lengths, cfg.trt_opt_quantile)))
    lo = max(1, min(lo, max_length))
    opt = max(lo, min(opt, max_length))
    opt_batch = max(1, cfg.trt_max_batch // 2)
    return SeqProfile(min_len=lo, opt_len=opt, max_len=max_length, min_batch=1,
                      opt_batch=opt_batch, max_batch=cfg.trt_max_batch)


def workspace_bytes(cfg: ExportSection) -> int:
    return int(cfg.trt_workspace_mb) * 1024 * 1024


@dataclass
class EngineResult:
    """A built engine, or why none was built."""

    onnx_path: str
    plan_path: str | None
    skipped: bool
    reason: str
    profile: dict
    fp16: bool
    workspace_bytes: int
    tensorrt_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def tensorrt_unavailable_reason() -> str | None:
    """None when a TensorRT builder and a CUDA GPU exist; otherwise the reason (for metadata)."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError or a broken placeholder package
        return (f"the tensorrt Python package is not importable ({type(e).__name__}: {e}); its "
                "builder libraries are not on the package index for these machines")
    if not hasattr(trt, "Builder"):
        return "the installed tensorrt package has no Builder (lean/dispatch runtime only)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU visible (torch.cuda.is_available() is False)"
    except Exception as e:  # noqa: BLE001
        return f"cannot query CUDA through torch: {e}"
    return None


def build_engine(onnx_path: str | Path, out_dir: str | Path, profile: SeqProfile,
                 cfg: ExportSection) -> EngineResult:
    """Build ``out_dir/model.plan`` with the TensorRT Python API, or record why not."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    base = dict(onnx_path=str(onnx_path), profile=asdict(profile), fp16=cfg.trt_fp16,
                workspace_bytes=workspace_bytes(cfg))
    reason = tensorrt_unavailable_reason()
    if reason:
        return EngineResult(plan_path=None, skipped=True, reason=reason, **base)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(cfg))
    if cfg.trt_fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    mn, op, mx = profile.shapes()
    for name in INPUTS:
        opt.set_shape(name, mn, op, mx)
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if WINDOW_WEIGHTS in names:  # chunked model: [essays, windows], both within the batch range
        b = (profile.min_batch, profile.opt_batch, profile.max_batch)
        opt.set_shape(WINDOW_WEIGHTS, (b[0], b[0]), (b[1], b[1]), (b[2], b[2]))
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = out_dir / PLAN_FILE
    tmp = plan.with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(serialized))
    shutil.move(tmp, plan)
    return EngineResult(plan_path=str(plan), skipped=False, reason="built",
                        tensorrt_version=getattr(trt, "__version__", None), **base)


def build_engines(exports: list, texts: list[str], cfg: ExportSection,
                  folder_for: Callable[[str], Path]) -> dict:
    """An engine per exported fold model (``OnnxExport``s), profiles from ``texts``' token
    lengths per member; ``folder_for(name)`` gives each engine's output folder.

    Returns ``{engines: {member: [plan or None per fold]}, skipped, reason, profiles, rows}``.
    """
    from aes_core.models.regressor import load_regressor_tokenizer
    from aes_core.serving.onnx_scorer import tokenize

    by_member: dict[str, list] = {}
    for e in exports:
        by_member.setdefault(e.member, []).append(e)
    engines: dict[str, list[str | None]] = {}
    rows, reasons, profiles = [], set(), {}
    for member, metas in sorted(by_member.items()):
        metas = sorted(metas, key=lambda m: m.fold)
        spec_dir = Path(metas[0].member_dir)
        from aes_core.export.onnx import load_spec

        spec = load_spec(spec_dir)
        lengths = [len(s) for s in tokenize(load_regressor_tokenizer(spec_dir), texts, spec)]
        profile = sequence_profile(lengths, spec.max_length, cfg)
        profiles[member] = asdict(profile)
        engines[member] = []
        for meta in metas:
            res = build_engine(meta.onnx_path, folder_for(f"{member}__f{meta.fold}"), profile,
                               cfg)
            engines[member].append(res.plan_path)
            reasons.add(res.reason)
            rows.append({"member": member, "fold": meta.fold, "built": not res.skipped,
                         "min/opt/max len": f"{profile.min_len}/{profile.opt_len}/"
                                            f"{profile.max_len}"})
    skipped = not any(p for ps in engines.values() for p in ps)
    return {"engines": engines, "skipped": skipped, "reason": "; ".join(sorted(reasons)),
            "profiles": profiles, "rows": rows, "fp16": cfg.trt_fp16,
            "workspace_mb": cfg.trt_workspace_mb}
