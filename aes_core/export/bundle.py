"""Building the serving bundle: exported fold models, then the manifest that commits them.

``export_member`` (one fold x head, picklable for worker processes) copies the trained
regressor folder into ``members/<member>/fold<k>-<spec hash>/`` (hard links where possible),
exports ``model.onnx`` next to it and checks parity with PyTorch; a folder that already holds
a parity-checked export of the same model is reused. ``build_bundle`` adds the ensemble, the
GBDT member, the essay statistics and the essay flagger, and writes the manifest last.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from aes_core.contracts import FoldHeadCheckpoint, OnnxExport
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.members import GBDT_MEMBER
from aes_core.models.spec import ONNX_FILE, load_spec
from aes_core.serving.manifest import (
    ENSEMBLE_PATH,
    FLAGGER_DIR,
    FLAGGER_EXTRA,
    GBDT_DIR,
    MEMBERS_DIR,
    STATS_FILE,
    Bundle,
    BundleError,
    MemberEntry,
    ServingManifest,
    link_or_copy_tree,
    prune_members,
    write_manifest,
)

PARITY_FILE = "parity.json"
FAILED_SUFFIX = ".failed"


@dataclass
class ExportTask:
    """One fold model to export into the bundle (plain data for a worker process)."""

    checkpoint_json: str
    bundle_dir: str
    opset: int
    parity_texts: list[str]
    parity_atol: float


def member_folder(bundle_dir: str | Path, ckpt: FoldHeadCheckpoint) -> Path:
    tag = ckpt.spec_hash or "model"
    return Path(bundle_dir) / MEMBERS_DIR / ckpt.member / f"fold{ckpt.fold}-{tag}"


def export_member(task: ExportTask) -> OnnxExport:
    """Export one checkpoint into the bundle and check ONNX/PyTorch parity."""
    from aes_core.export.onnx import check_parity, export_onnx  # torch: lazily

    ckpt = FoldHeadCheckpoint.model_validate_json(task.checkpoint_json)
    folder = member_folder(task.bundle_dir, ckpt)
    parity_path = folder / PARITY_FILE
    if parity_path.exists() and (folder / ONNX_FILE).exists():
        parity = json.loads(parity_path.read_text())
        if parity.get("atol") == task.parity_atol and parity.get("passed"):
            return _result(ckpt, folder, parity)
    tmp = folder.with_name(folder.name + ".tmp")
    link_or_copy_tree(ckpt.model_dir, tmp)
    export_onnx(ckpt.model_dir, tmp, opset=task.opset)
    report = check_parity(ckpt.model_dir, tmp / ONNX_FILE, task.parity_texts, task.parity_atol)
    (tmp / PARITY_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    if not report.passed:  # never replace a folder the live manifest may serve with it
        failed = folder.with_name(folder.name + FAILED_SUFFIX)
        if failed.exists():
            shutil.rmtree(failed)
        tmp.rename(failed)
        return _result(ckpt, failed, report.to_dict())
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return _result(ckpt, folder, report.to_dict())


def _result(ckpt: FoldHeadCheckpoint, folder: Path, parity: dict) -> OnnxExport:
    return OnnxExport(member=ckpt.member, backbone=ckpt.backbone, head=ckpt.head,
                      fold=ckpt.fold, member_dir=str(folder),
                      onnx_path=str(folder / ONNX_FILE), model_dir=ckpt.model_dir,
                      parity=parity)


def build_bundle(bundle_dir: str | Path, ensemble: EnsembleArtifact,
                 exports: list[OnnxExport], gbdt_dir: str | Path | None,
                 essay_stats: dict | None, flagger_dir: str | Path | None = None,
                 **provenance: str) -> ServingManifest:
    """Commit a bundle for ``ensemble``: copy what it needs in, write the manifest last.

    ``exports`` holds every exported fold model (any backbone); the ensemble's transformer
    members must all be there, each with one fold model per ensemble fold. ``flagger_dir``
    (an ``EssayFlagger.save`` folder) is copied in as ``flagger/``; without it the bundle
    scores without flags.
    """
    from aes_core.tracking import git_commit, package_versions

    root = Path(bundle_dir)
    by_member: dict[str, dict[int, OnnxExport]] = {}
    for e in exports:
        by_member.setdefault(e.member, {})[e.fold] = e
    entries, problems = [], []
    for m in ensemble.members:
        if m == GBDT_MEMBER:
            continue
        folds = by_member.get(m, {})
        want = list(range(ensemble.n_folds)) if ensemble.n_folds else sorted(folds)
        missing = [f for f in want if f not in folds]
        if not folds or missing:
            problems.append(f"{m}: no exported fold model for fold(s) {missing or want}")
            continue
        failed = [f for f in want if not folds[f].parity.get("passed")]
        if failed:
            problems.append(f"{m}: the ONNX export of fold(s) {failed} failed its parity "
                            f"check (re-materialize onnx_models)")
            continue
        absent = [f"the exported folder of fold {f} ({_rel(folds[f].member_dir, root)}) is "
                  f"missing" for f in want
                  if not Path(folds[f].member_dir).is_relative_to(root)
                  or not (Path(folds[f].member_dir) / ONNX_FILE).exists()]
        if absent:
            problems += [f"{m}: {a} (re-materialize onnx_models)" for a in absent]
            continue
        first = folds[want[0]]
        entries.append(MemberEntry(
            name=m, backbone=first.backbone, head=first.head,
            folds=[str(Path(folds[f].member_dir).relative_to(root)) for f in want],
            spec=load_spec(first.member_dir)))
    if problems:
        raise ValueError("cannot build the serving bundle: " + "; ".join(problems))
    gbdt_rel = None
    if GBDT_MEMBER in ensemble.members:
        if not gbdt_dir:
            raise ValueError("the ensemble has a 'gbdt' member but no GBDT model folder")
        link_or_copy_tree(gbdt_dir, root / GBDT_DIR)
        gbdt_rel = GBDT_DIR
    (root / ENSEMBLE_PATH).parent.mkdir(parents=True, exist_ok=True)
    ensemble.save(root / ENSEMBLE_PATH)
    stats_rel = None
    if essay_stats is not None:
        (root / STATS_FILE).write_text(json.dumps(essay_stats, indent=2))
        stats_rel = STATS_FILE
    extras = {}
    if flagger_dir is not None:
        link_or_copy_tree(flagger_dir, root / FLAGGER_DIR)
        extras[FLAGGER_EXTRA] = FLAGGER_DIR
    manifest = ServingManifest(members=entries, gbdt_dir=gbdt_rel, essay_stats=stats_rel,
                               extras=extras, git_commit=git_commit(),
                               versions=package_versions(), **provenance)
    manifest.student = _kept_student(root, manifest)
    write_manifest(root, manifest)
    prune_members(root, [f for e in entries for f in e.folds])
    if flagger_dir is None and (root / FLAGGER_DIR).is_dir():  # no longer referenced
        shutil.rmtree(root / FLAGGER_DIR, ignore_errors=True)
    return manifest


def _rel(path: str | Path, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else f"{p}, outside {root}"


def _kept_student(root: Path, manifest: ServingManifest):
    """The bundle's distilled student, when it learned exactly this ensemble (else None)."""
    try:
        old = Bundle.load(root).manifest.student
    except (BundleError, ValueError):
        return None
    if old is None or not (root / old.folder).is_dir():
        return None
    same = Bundle(root, manifest).ensemble_identity() == old.distilled_from
    return old if same else None


def typical_stats(folded: pd.DataFrame, low_q: float, high_q: float) -> dict:
    """The page's per-score typical essay statistics from the training essays."""
    from aes_core.essay_stats import typical_ranges

    return {"source_kind": "folded_essays", "n_essays": int(len(folded)), "low_q": low_q,
            "high_q": high_q,
            "ranges": typical_ranges(folded["full_text"].tolist(),
                                     folded["score"].astype(int).to_numpy(), low_q, high_q)}

