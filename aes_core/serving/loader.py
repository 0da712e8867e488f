"""Find the latest materialized ensemble and its members under ``storage_root`` and build a scorer.

Storage layout (TableIOManager / ArtifactStore, see ARCHITECTURE.md)::

    tables/ensemble_weights.json                      EnsembleArtifact
    tables/<backbone>/onnx_models/<fold>__<head>.json {"member_dir": ..., "fold", "head", ...}
    artifacts/<backbone>/onnx_models/<fold>__<head>/  model.onnx, aes_model.json, backbone/
    tables/gbdt_member.json                           {"model_dir": ...}

Usage (the teachers' page does exactly this)::

    scorer = load_scorer(cfg)                       # in-process ONNX Runtime
    scored = score_frame(scorer, essays_df)         # aes_core.serving.base
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from aes_core.config import AesConfig
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.onnx import ONNX_FILE
from aes_core.members import GBDT_MEMBER, split_member_name
from aes_core.serving.base import Scorer
from aes_core.serving.onnx_scorer import OnnxScorer

log = logging.getLogger(__name__)

ENSEMBLE_KEY = ("ensemble_weights",)
GBDT_KEY = ("gbdt_member",)
ONNX_ASSET = "onnx_models"


class ScorerNotReady(FileNotFoundError):
    """Something the scorer needs has not been materialized yet; the message says what."""


@dataclass
class ServingArtifacts:
    """Everything a scorer needs, resolved to paths."""

    ensemble: EnsembleArtifact
    ensemble_path: Path
    members: dict[str, list[Path]]     # member -> fold folders (model.onnx + tokenizer + spec)
    gbdt_dir: Path | None


def _table(root: Path, *key: str) -> Path:
    return root / "tables" / Path(*key)


def load_ensemble(cfg: AesConfig) -> tuple[EnsembleArtifact, Path]:
    path = _table(Path(cfg.storage_root), *ENSEMBLE_KEY).with_suffix(".json")
    if not path.exists():
        raise ScorerNotReady(f"no ensemble at {path}: materialize ensemble_weights first")
    return EnsembleArtifact.model_validate(json.loads(path.read_text())), path


def member_fold_dirs(cfg: AesConfig, backbone: str, head: str, n_folds: int = 0) -> list[Path]:
    """Exported fold folders of one member, in fold order (from the onnx_models tables).

    With ``n_folds``, folds >= n_folds (stale exports of an earlier run) are left out."""
    root = Path(cfg.storage_root)
    found: dict[int, Path] = {}
    table_dir = _table(root, backbone, ONNX_ASSET)
    for meta_path in sorted(table_dir.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("head") == head and (Path(meta["member_dir"]) / ONNX_FILE).exists():
            found[int(meta["fold"])] = Path(meta["member_dir"])
    if not found:  # tables missing (e.g. copied artifacts only): fall back to the folders
        art = root / "artifacts" / backbone / ONNX_ASSET
        for d in sorted(art.glob(f"*__{head}")):
            if (d / ONNX_FILE).exists():
                found[int(d.name.split("__", 1)[0])] = d
    return [found[k] for k in sorted(found) if not n_folds or k < n_folds]


def resolve_artifacts(cfg: AesConfig) -> ServingArtifacts:
    """Resolve the ensemble and every member's exported folders; errors say what is missing."""
    ensemble, path = load_ensemble(cfg)
    members: dict[str, list[Path]] = {}
    problems: list[str] = []
    for m in ensemble.members:
        if m == GBDT_MEMBER:
            continue
        try:
            backbone, head = split_member_name(m)
        except ValueError as e:
            problems.append(f"{e} nor '{GBDT_MEMBER}'")
            continue
        dirs = member_fold_dirs(cfg, backbone, head, ensemble.n_folds)
        if not dirs:
            problems.append(f"member {m!r}: no exported ONNX folds under "
                            f"{Path(cfg.storage_root) / 'artifacts' / backbone / ONNX_ASSET} "
                            f"(materialize {backbone}/onnx_models)")
        elif ensemble.n_folds and len(dirs) != ensemble.n_folds:
            log.warning("member %s: %d exported folds, ensemble was fit on %d", m, len(dirs),
                        ensemble.n_folds)
        members[m] = dirs
    gbdt_dir = None
    if GBDT_MEMBER in ensemble.members:
        gpath = _table(Path(cfg.storage_root), *GBDT_KEY).with_suffix(".json")
        if not gpath.exists():
            problems.append(f"member 'gbdt': no {gpath} (materialize gbdt_member)")
        elif not json.loads(gpath.read_text()).get("model_dir"):
            problems.append(f"member 'gbdt': {gpath} has no model_dir (gbdt.enabled was false)")
        else:
            gbdt_dir = Path(json.loads(gpath.read_text())["model_dir"])
    if problems:
        raise ScorerNotReady("cannot build a scorer: " + "; ".join(problems))
    return ServingArtifacts(ensemble, path, members, gbdt_dir)


def load_scorer(cfg: AesConfig, prefer_triton: bool = False,
                triton_url: str | None = None) -> Scorer:
    """The scorer for the latest materialized ensemble.

    With ``prefer_triton`` and a Triton server answering at ``triton_url`` (default
    ``cfg.serving.triton_url`` or ``127.0.0.1:<http_port>``) whose scorer model serves the
    same members, a Triton client scorer; otherwise the in-process ONNX Runtime scorer.
    Both give the same scores (same tokenization, fold averaging and blending).
    """
    arts = resolve_artifacts(cfg)
    if prefer_triton:
        from aes_core.serving.triton import TritonScorer, server_ready

        url = triton_url or cfg.serving.triton_url or f"127.0.0.1:{cfg.serving.http_port}"
        if server_ready(url):
            try:
                return TritonScorer(url, arts.ensemble,
                                    batch_size=cfg.serving.request_batch_size)
            except Exception as e:  # wrong repository on that server: fall back, loudly
                log.warning("Triton at %s is not usable (%s); scoring in-process", url, e)
        else:
            log.warning("no Triton server answers at %s; scoring in-process", url)
    return OnnxScorer(arts.ensemble, arts.members, arts.gbdt_dir,
                      batch_size=cfg.serving.request_batch_size,
                      intra_op_threads=cfg.serving.ort_threads)
