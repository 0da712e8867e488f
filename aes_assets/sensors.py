"""The inbox sensor: one ``score_inbox_file`` run per new essay CSV dropped in serving.inbox_dir.

``run_key`` is the file's content hash and the cursor keeps every hash already requested, so
a file is scored once even across daemon restarts (Dagster also refuses a repeated run_key);
the op itself is idempotent (an existing scored output is never recomputed). Outputs go to
serving.outbox_dir (flagged by the bundle's flagger), bad rows to a report in
serving.rejected_dir, good rows to the history.
"""

import contextlib
import json
from collections.abc import Iterator

import dagster as dg

from aes_core.config import AesConfig
from aes_core.flags import EssayFlagger
from aes_core.serving.base import Scorer
from aes_core.serving.inbox import list_inbox, process_inbox_file
from aes_core.serving.loader import load_bundle, open_scorer
from aes_resources.settings import PipelineSettings

INBOX_JOB = "score_inbox_file_job"
INBOX_SENSOR = "inbox_sensor"
CURSOR_KEEP = "hashes"


class InboxFileConfig(dg.Config):
    """Which inbox file a run scores."""

    path: str
    content_hash: str


@contextlib.contextmanager
def serving_scorer(cfg: AesConfig, log=None) -> Iterator[tuple[Scorer, EssayFlagger | None]]:
    """(scorer, flagger) for sensor/schedule runs, both from the serving bundle: a configured
    Triton server (``serving.triton_url``) when it answers, else in-process ONNX Runtime; the
    bundle's flagger (None when it has none)."""
    bundle = load_bundle(cfg)
    flagger = bundle.flagger()
    with open_scorer(bundle, cfg.serving, start_server=False, logger=log) as choice:
        if log is not None:
            flags = "with flags" if flagger is not None else "without flags (none in the bundle)"
            log.info(f"scoring with {choice.via} {flags} (bundle {bundle.version()})")
        yield choice.scorer, flagger


@dg.op(out=dg.Out(dg.Nothing),
       description="Validate and score one inbox CSV; write outbox / rejected / history files.")
def score_inbox_file(context: dg.OpExecutionContext, config: InboxFileConfig,
                     settings: PipelineSettings) -> dg.Output:
    cfg = settings.config
    s = cfg.serving
    with serving_scorer(cfg, context.log) as (scorer, flagger):
        res = process_inbox_file(config.path, config.content_hash, scorer, s.outbox_dir,
                                 s.rejected_dir, s.history_dir, flagger=flagger)
    if res.bad_rows or res.reason:
        context.log.warning(f"{res.file}: {res.bad_rows} bad row(s) {res.reason}; report in "
                            f"{s.rejected_dir}")
    return dg.Output(None, metadata={"file": res.file, "scored": res.scored,
                                     "bad_rows": res.bad_rows, "skipped": res.skipped,
                                     "outputs": dg.MetadataValue.json(res.outputs)})


@dg.job(name=INBOX_JOB,
        description="Score one essay CSV from the inbox (run by inbox_sensor).")
def score_inbox_file_job():
    score_inbox_file()


def load_cursor(cursor: str | None) -> set[str]:
    if not cursor:
        return set()
    return set(json.loads(cursor).get(CURSOR_KEEP, []))


def build_inbox_sensor(cfg: AesConfig) -> dg.SensorDefinition:
    s = cfg.serving

    @dg.sensor(name=INBOX_SENSOR, job=score_inbox_file_job,
               minimum_interval_seconds=s.sensor_interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"One run per new CSV in {s.inbox_dir} (run_key = content hash).")
    def inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen = load_cursor(context.cursor)
        requests, skipped = [], []
        for path, digest in list_inbox(s.inbox_dir, s.inbox_settle_s):
            if digest in seen:
                skipped.append(path.name)
                continue
            seen.add(digest)
            requests.append(dg.RunRequest(
                run_key=digest,
                run_config={"ops": {"score_inbox_file": {"config": {
                    "path": str(path), "content_hash": digest}}}},
                tags={"aes/inbox_file": path.name, "aes/content_hash": digest[:12]}))
        cursor = json.dumps({CURSOR_KEEP: sorted(seen)})
        if not requests:
            why = f"already requested: {skipped}" if skipped else f"no new CSV in {s.inbox_dir}"
            return dg.SensorResult(skip_reason=why, cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return inbox_sensor
