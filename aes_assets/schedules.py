"""Re-scoring the inbox history: nightly (serving.rescore_cron) and on a new ensemble.

Each run scores (and flags) every archived inbox file (serving.history_dir) with the current
ensemble into ``<outbox>/rescored/<ensemble hash>/``; files already there for that ensemble
and flagger are skipped, so repeated triggers cost nothing and a new ensemble or flagger gets
a fresh folder.
"""

import hashlib
from pathlib import Path

import dagster as dg

from aes_assets import keys
from aes_assets.sensors import serving_scorer
from aes_core.config import AesConfig
from aes_core.serving.inbox import rescore_history
from aes_core.serving.loader import load_bundle
from aes_resources.settings import PipelineSettings

RESCORE_JOB = "rescore_inbox_history_job"
RESCORED = "rescored"


def ensemble_tag(cfg: AesConfig) -> str:
    """A short content hash of the bundle's ensemble and flagger (names its re-score folder)."""
    from aes_core.flags.flagger import FLAGGER_FILE

    bundle = load_bundle(cfg)
    h = hashlib.sha256(bundle.ensemble.model_dump_json().encode())
    if bundle.flagger_dir is not None:
        h.update((bundle.flagger_dir / FLAGGER_FILE).read_bytes())
    return h.hexdigest()[:12]


@dg.op(out=dg.Out(dg.Nothing),
       description="Re-score every archived inbox file with the current ensemble.")
def rescore_inbox_history(context: dg.OpExecutionContext,
                          settings: PipelineSettings) -> dg.Output:
    cfg = settings.config
    tag = ensemble_tag(cfg)
    out_dir = Path(cfg.serving.outbox_dir) / RESCORED / tag
    if not any(Path(cfg.serving.history_dir).glob("*.essays.csv")):
        context.log.info(f"no inbox history in {cfg.serving.history_dir}")
        return dg.Output(None, metadata={"ensemble": tag, "files": 0,
                                         "detail": dg.MetadataValue.json([])})
    with serving_scorer(cfg, context.log) as (scorer, flagger):
        done = rescore_history(cfg.serving.history_dir, scorer, out_dir, flagger=flagger)
    return dg.Output(None, metadata={
        "ensemble": tag, "out_dir": dg.MetadataValue.path(str(out_dir)),
        "files": len(done), "rescored_rows": sum(d["rows"] for d in done),
        "detail": dg.MetadataValue.json(done)})


@dg.job(name=RESCORE_JOB,
        description="Re-score the inbox history with the current ensemble.")
def rescore_inbox_history_job():
    rescore_inbox_history()


def build_rescore_schedule(cfg: AesConfig) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="nightly_rescore", job=rescore_inbox_history_job,
        cron_schedule=cfg.serving.rescore_cron, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Re-score the inbox history ({cfg.serving.rescore_cron}).")


def build_new_ensemble_sensor(cfg: AesConfig) -> dg.SensorDefinition:
    status = (dg.DefaultSensorStatus.RUNNING if cfg.serving.rescore_on_new_ensemble
              else dg.DefaultSensorStatus.STOPPED)

    @dg.asset_sensor(asset_key=keys.BUNDLE, job=rescore_inbox_history_job,
                     name="rescore_on_new_ensemble", default_status=status,
                     description="Re-score the inbox history when a new serving bundle is "
                                 "materialized (serving.rescore_on_new_ensemble).")
    def rescore_on_new_ensemble(context: dg.SensorEvaluationContext, asset_event):
        event = f"{asset_event.run_id}-{asset_event.timestamp:.6f}"
        yield dg.RunRequest(run_key=f"ensemble-{event}",
                            tags={"aes/trigger": "serving_bundle", "aes/event": event})

    return rescore_on_new_ensemble
