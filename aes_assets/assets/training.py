"""Training stage: the backbone-keyed asset factory and the out-of-fold table.

Per configured backbone ``b`` (a config entry, no code): ``b/mlm_backbone`` and
``b/fold_head_checkpoints`` (fold x head partitions, two-stage recipe). The partitioned asset
has a single-run backfill policy: a backfill (or the pipeline driver) materializes any set of
partitions in ONE step, which spreads them over the GPU resource's worker slots (K worker
processes per GPU, or CPU workers). Every partition still gets its own materialization
metadata and MLflow run, and can be re-run alone (``--partition 2|lstm``).
"""


import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd

from aes_assets import keys
from aes_assets.assets.backbone import mlm_backbone_asset
from aes_assets.configs import run_config
from aes_assets.metadata import code_version, config_metadata, md
from aes_assets.partitions import (
    fold_head_partitions,
    head_major,
    partition_key,
    split_partition_key,
)
from aes_core.config import AesConfig, BackboneSection, resolve_section
from aes_core.contracts import FoldHeadCheckpoint, MlmBackbone
from aes_core.hardware import usable_cpus
from aes_core.training.parallel import JobFailure, failures, out_of_memory_hint
from aes_core.training.shared_tokens import share_tokens
from aes_core.training.tasks import PartitionTask, run_partitions, stage_history
from aes_core.training.timeline import plot_timeline, timeline_rows, timeline_summary
from aes_resources.gpu import GpuResource
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore

FOLDED_FILE, UNLABELLED_FILE = "folded.parquet", "unlabelled.parquet"
TOKENS_DIR, TIMELINE_PLOT = "tokens", "timeline.png"  # the step's shared token cache; its plot


class Progress:
    """"k of N" with elapsed and estimated remaining time, for long multi-partition steps."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.time()

    def step(self) -> str:
        self.done += 1
        elapsed = time.time() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        return (f"{self.done} of {self.total} done, {elapsed / 60:.1f} min elapsed, "
                f"~{left / 60:.1f} min left")


def _partition_metadata(r: FoldHeadCheckpoint) -> dict:
    return {
        "model_dir": dg.MetadataValue.path(r.model_dir),
        "stage1_val_qwk": r.stage1_val_qwk, "stage2_val_qwk": r.stage2_val_qwk,
        "kept_stage": r.kept_stage, "fold_qwk": r.fold_qwk, "fold_essays": r.fold_essays,
        "train_tokens": r.train_tokens, "seconds": r.seconds,
        "tokens_per_second": round(r.train_tokens / max(
            r.stage1.seconds + (r.stage2.seconds if r.stage2 else 0.0), 1e-9)),
        "steady_tokens_per_s": r.stage1.steady_tokens_per_s,
        "peak_gpu_gib": r.peak_gpu_gib, "device": r.device, "reused": r.reused,
        "notes": "; ".join(r.notes) or "none", "trainable_params": r.trainable_params,
        "started_at": r.started_at, "finished_at": r.finished_at, "worker": r.worker,
        "phase_seconds": r.phase_seconds,
        "essays_from_token_cache": r.essays_from_token_cache,
        "essays_tokenized": r.essays_tokenized,
    }


def fold_head_asset(cfg: AesConfig, backbone: BackboneSection) -> dg.AssetsDefinition:
    """``{backbone}/fold_head_checkpoints``: one partition = one fold x head of the heads
    this backbone trains, two stages (stage 2 with pseudo-labelled unlabelled essays when
    ``train.pseudo_label_essays``), with the backbone's train settings (``train_for``)."""
    name = backbone.name
    train = cfg.train_for(backbone)
    # the launchpad shows (and a run changes) this backbone's own training settings
    TrainRun = run_config(cfg.model_copy(update={"train": train}), "train")

    @dg.asset(
        key=keys.fold_head_key(name), group_name=keys.backbone_group(name),
        partitions_def=fold_head_partitions(cfg, backbone),
        backfill_policy=dg.BackfillPolicy.single_run(),
        ins={"folded_essays": dg.AssetIn(key=keys.FOLDED),
             "mlm_backbone": dg.AssetIn(key=keys.mlm_key(name)),
             "unlabelled_essays": dg.AssetIn(key=keys.UNLABELLED)},
        code_version=code_version(train, cfg.heads, backbone.encoder_only()),
        description=f"Backbone {name!r} + head fine-tuned on folds != i in two stages: the "
                    "final model folder, stage QWKs and OOF predictions on fold i. A backfill "
                    "trains its partitions in one step over the GPU worker slots.",
        kinds={"pytorch"},
    )
    def _fold_head(context: dg.AssetExecutionContext, config: TrainRun,
                   settings: PipelineSettings, artifacts: ArtifactStore, mlflow: MlflowTracker,
                   gpu: GpuResource, folded_essays: pd.DataFrame, mlm_backbone: MlmBackbone,
                   unlabelled_essays: pd.DataFrame):
        step_start = time.time()
        base = settings.config
        tcfg = resolve_section(base.train_for(name), config, "run config (train)")
        full = base.with_train(name, tcfg)
        pks = head_major(context.partition_keys)  # consecutive jobs alternate GPUs: mixed heads
        step_dir = artifacts.folder(context.asset_key)
        folded_path = step_dir / f"{FOLDED_FILE}.{context.run_id[:8]}"
        folded_essays.to_parquet(folded_path, index=False)
        unlabelled_path = None  # stage 2's pseudo-labels read them (train.pseudo_label_essays)
        if tcfg.pseudo_label_essays and len(unlabelled_essays):
            unlabelled_path = step_dir / f"{UNLABELLED_FILE}.{context.run_id[:8]}"
            unlabelled_essays[["full_text"]].to_parquet(unlabelled_path, index=False)
        token_cache = (step_dir / f"{TOKENS_DIR}.{context.run_id[:8]}"
                       if tcfg.share_tokens and len(pks) > 1 else None)
        slots = gpu.worker_slots(len(pks), base.backbone(name).workers_per_gpu)
        tags = dict(context.run.tags)
        tasks = []
        for pk in pks:
            fold, head = split_partition_key(pk)
            tasks.append(PartitionTask(
                cfg_json=full.model_dump_json(), backbone=name,
                backbone_path=mlm_backbone.path, fold=fold, head=head,
                out_dir=str(artifacts.folder(context.asset_key, pk)),
                folded_path=str(folded_path),
                unlabelled_path=str(unlabelled_path) if unlabelled_path else None,
                token_cache=str(token_cache) if token_cache else None,
                **gpu.task_placement(slots, pk, tags)))
        context.log.info(f"{name}: {len(pks)} partition(s) on {len(slots)} worker slot(s) "
                         f"[{', '.join(s.describe() for s in slots)}]")
        progress = Progress(len(pks))
        # MLflow runs are written by one thread beside the training, so a partition's results
        # never wait for the store (its first use imports mlflow and opens it: seconds). It
        # starts with the first result: an import running beside the step's tokenizing took
        # the GIL from it (0.9 -> 4 s), and workers may fork from this process until then.
        tracking = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
        tracked: list = []

        def on_result(i: int, r: FoldHeadCheckpoint | JobFailure) -> None:
            pk = pks[i]
            if isinstance(r, JobFailure):
                context.log.error(f"{name} [{pk}] failed: {r.summary} ({progress.step()})")
                return
            context.add_asset_metadata(_partition_metadata(r), partition_key=pk)
            if not r.reused:
                tracked.append(tracking.submit(_track, mlflow, context.run_id, name, pk, full, r))
            context.log.info(
                f"{name} [{pk}]: fold QWK {r.fold_qwk:.4f}, {r.kept_stage} weights"
                + (" (reused)" if r.reused else f", {r.seconds:.0f}s")
                + f" - {progress.step()}")

        def tokenize_once() -> None:
            if token_cache is None:
                return
            texts = folded_essays["full_text"].astype(str).tolist()
            if unlabelled_path:
                texts += unlabelled_essays["full_text"].astype(str).tolist()
            done = share_tokens(mlm_backbone.path, full.backbone(name), texts, token_cache,
                                threads=usable_cpus())
            context.log.info(f"{name}: tokenized {done.essays} distinct essays once for all "
                             f"{len(pks)} partitions in {done.seconds:.1f}s")

        try:
            results, _ = run_partitions(tasks, slots, full.gpu, on_result, tokenize_once, name,
                                        context.log.info, context.log.warning)
        finally:  # the runs of finished partitions are written even if the pool itself fails
            tracking.shutdown(wait=True)
        step_seconds = time.time() - step_start
        for t in tracked:
            t.result()  # a tracking error fails the step, as before
        folded_path.unlink(missing_ok=True)
        if unlabelled_path:
            unlabelled_path.unlink(missing_ok=True)
        if token_cache is not None:
            shutil.rmtree(token_cache, ignore_errors=True)
        context.add_output_metadata(_timeline_metadata(
            [(pk, r) for pk, r in zip(pks, results, strict=True)
             if isinstance(r, FoldHeadCheckpoint)], step_start, step_seconds,
            step_dir / TIMELINE_PLOT, f"{name}: {len(pks)} partitions on {len(slots)} "
            f"worker slot(s)"))
        failed = failures(results)
        if failed:
            listed = "; ".join(f"{pks[f.index]}: {f.summary}" for f in failed)
            sharing = sum(s.gpu == slots[0].gpu for s in slots)  # partitions on one GPU at once
            raise dg.Failure(
                description=f"{len(failed)} of {len(pks)} partition(s) failed: {listed}. The "
                            f"others are complete and are reused when the step runs again; "
                            f"re-run one alone with its partition key."
                            + out_of_memory_hint(failed, name, sharing),
                metadata={"errors": dg.MetadataValue.md("\n\n".join(
                    f"**{pks[f.index]}**\n```\n{f.error[-3000:]}\n```" for f in failed))})
        context.add_output_metadata(config_metadata(tcfg, full.heads))
        if len(pks) == 1:
            return results[0]
        return dict(zip(pks, results, strict=True))

    return _fold_head


def _timeline_metadata(results: list[tuple[str, FoldHeadCheckpoint]], step_start: float,
                       step_seconds: float, plot: Path, title: str) -> dict:
    """The step's timeline (``aes_core.training.timeline``) as output metadata and a plot."""
    rows = timeline_rows(results, step_start)
    if rows.empty:
        return {}
    summary = timeline_summary(rows, step_seconds)
    plot_timeline(rows, step_seconds, plot, title)
    return {"step_seconds": round(step_seconds, 2), "timeline": summary,
            "timeline_plot": dg.MetadataValue.path(str(plot))}


def _track(mlflow: MlflowTracker, run_id: str, backbone: str, pk: str, cfg: AesConfig,
           r: FoldHeadCheckpoint) -> None:
    """One MLflow run per trained partition: config, stage metrics history, final figures."""
    params = {"train": cfg.train_for(backbone).model_dump(), "heads": cfg.heads.model_dump(),
              "backbone": cfg.backbone(backbone).encoder_only().model_dump(), "fold": r.fold,
              "head": r.head, "checkpoint_path": r.model_dir, "device": r.device}
    tags = {"asset": f"{backbone}/{keys.FOLD_HEAD_ASSET}", "partition": pk,
            "backbone": backbone, "head": r.head, "fold": str(r.fold),
            "dagster_run_id": run_id, "kept_stage": r.kept_stage,
            "notes": "; ".join(r.notes) or "none"}
    with mlflow.run(f"{backbone}/{keys.FOLD_HEAD_ASSET}[{pk}]", params=params,
                    tags=tags) as run:
        for stage, rows in stage_history(Path(r.model_dir).parent).items():
            run.history(rows, prefix=f"{stage}-")
        run.metrics({"stage1_val_qwk": r.stage1_val_qwk, "stage2_val_qwk": r.stage2_val_qwk,
                     "fold_qwk": r.fold_qwk, "train_tokens": r.train_tokens,
                     "seconds": r.seconds})


def backbone_assets(cfg: AesConfig, backbone: BackboneSection) -> list[dg.AssetsDefinition]:
    """Every asset keyed by one backbone (``{backbone}/...``)."""
    return [mlm_backbone_asset(cfg, backbone), fold_head_asset(cfg, backbone)]


def as_partition_dict(value: object) -> dict[str, object]:
    """An all-partitions input as ``{partition key: value}`` (one stored partition arrives
    as the value itself)."""
    if isinstance(value, dict):
        return value
    return {} if value is None else {"?": value}


def oof_predictions_asset(cfg: AesConfig) -> dg.AssetsDefinition:
    """``oof_predictions``: every backbone x head member's out-of-fold predictions."""
    ins = {keys.ins_name(keys.fold_head_key(b.name)): dg.AssetIn(
        key=keys.fold_head_key(b.name), metadata={"allow_missing_partitions": True})
        for b in cfg.backbones}
    ins["folded_essays"] = dg.AssetIn(key=keys.FOLDED)

    own_heads = [f"{b.name}: {b.heads}" for b in cfg.backbones if b.heads is not None]

    @dg.asset(key=keys.OOF, group_name="training", ins=ins,
              code_version=code_version(cfg.heads, cfg.folds, *own_heads),
              description="Out-of-fold predictions (1..6) of every {backbone}__{head} member "
                          "on every essay; fails listing partitions that are not trained.")
    def _oof(context: dg.AssetExecutionContext, settings: PipelineSettings,
             mlflow: MlflowTracker, folded_essays: pd.DataFrame, **checkpoints) -> pd.DataFrame:
        from aes_core.training.oof import MissingPartitionsError, build_oof_table, qwk_reports

        full = settings.config
        found = [c for v in checkpoints.values() for c in as_partition_dict(v).values()]
        expected = [(b.name, h, f) for b in full.backbones for h in full.heads_for(b)
                    for f in range(full.folds.n_folds)]
        try:
            table = build_oof_table(folded_essays, found, expected)
        except MissingPartitionsError as e:
            raise dg.Failure(description=str(e)) from e
        reports = qwk_reports(table)
        overall = reports["overall"]["qwk"].to_dict()
        with mlflow.run(keys.OOF.to_user_string(), params={"members": list(overall)},
                        tags={"asset": keys.OOF.to_user_string(),
                              "dagster_run_id": context.run_id}) as run:
            run.metrics({f"oof_qwk.{m}": v for m, v in overall.items()})
        for m, v in overall.items():
            context.log.info(f"OOF QWK {m}: {v:.4f}")
        context.add_output_metadata({
            "rows": len(table), "members": list(overall),
            "qwk_per_head": md(reports["overall"]), "qwk_per_fold": md(reports["per_fold"]),
            "qwk_per_prompt": md(reports["per_prompt"]),
            **{f"qwk/{m}": float(v) for m, v in overall.items()},
        })
        return table

    return _oof


def training_assets(cfg: AesConfig) -> list[dg.AssetsDefinition]:
    """All backbones' assets plus ``oof_predictions``, shaped by the configuration."""
    out: list[dg.AssetsDefinition] = []
    for bb in cfg.backbones:
        out += backbone_assets(cfg, bb)
    return out + [oof_predictions_asset(cfg)]


__all__ = ["training_assets", "partition_key", "fold_head_asset", "oof_predictions_asset"]
