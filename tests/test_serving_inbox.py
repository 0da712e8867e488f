"""Inbox sensor, scoring job and re-scoring schedule on a real Dagster instance.

Files are dropped in the inbox, the sensor is evaluated, the requested runs are executed, the
"daemon" restarts (a fresh DagsterInstance on the same storage, with and without the stored
cursor), and every essay must be scored exactly once; bad rows are reported by line.
"""

from __future__ import annotations

import csv
import shutil

import dagster as dg
import pandas as pd
import pytest

from aes_assets.definitions import build_definitions
from aes_assets.schedules import RESCORE_JOB, RESCORED, ensemble_tag
from aes_assets.sensors import INBOX_JOB, INBOX_SENSOR
from aes_core.config import load_config
from aes_core.serving.base import score_frame
from aes_core.serving.inbox import parse_essay_csv
from aes_core.serving.onnx_scorer import OnnxScorer
from tests.conftest import tiny_overrides, write_profile
from tests.serving_support import (
    commit_bundle,
    export_checkpoints,
    make_checkpoints,
    sample_essays,
    spread_ensemble_for,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_backbone):
    tmp = tmp_path_factory.mktemp("inbox")
    ov = tiny_overrides(tmp, tiny_backbone)
    ov["serving"].update({"history_dir": str(tmp / "history"), "inbox_settle_s": 0.0,
                          "use_triton": False})
    profile = write_profile(tmp, ov)
    cfg = load_config(str(profile))
    exports = export_checkpoints(cfg.bundle_dir, make_checkpoints(
        tmp / "checkpoints", tiny_backbone, ["mean"], 2))
    essays = sample_essays(30)
    ens = spread_ensemble_for(exports, essays, 2)
    bundle = commit_bundle(cfg.bundle_dir, ens, exports)
    return {"cfg": cfg, "defs": build_definitions(str(profile)), "essays": essays,
            "tmp": tmp, "members": bundle.member_dirs(), "ens": ens}


def _write(path, rows, header=("essay_id", "full_text")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _tick(env, instance, cursor):
    sensor = env["defs"].get_sensor_def(INBOX_SENSOR)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    data = sensor.evaluate_tick(ctx)
    return data.run_requests or [], data.cursor, data.skip_message


def _run_all(env, instance, requests):
    job = env["defs"].get_job_def(INBOX_JOB)
    outs = []
    for rr in requests:
        res = job.execute_in_process(run_config=rr.run_config, instance=instance,
                                     tags=rr.tags)
        assert res.success
        outs.append(_output_meta(res))
    return outs


def _output_meta(res):
    (ev,) = [e for e in res.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in ev.event_specific_data.metadata.items()}


def _scored_ids(outbox):
    frames = [pd.read_csv(p, dtype={"essay_id": str}) for p in sorted(outbox.glob("*.scored.csv"))]
    return pd.concat(frames)["essay_id"].tolist() if frames else []


def test_parse_reports_each_bad_row(tmp_path):
    e = sample_essays(3)
    path = tmp_path / "b.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["essay_id", "full_text"])
        w.writerow([e.essay_id[0], "first line\nsecond line"])   # lines 2-3, good
        w.writerow(["", "no id"])                                 # line 4
        w.writerow([e.essay_id[1], "   "])                        # line 5
        w.writerow([e.essay_id[0], "again"])                      # line 6: duplicate
        w.writerow([e.essay_id[2], "text", "extra"])              # line 7: 3 fields
    parsed = parse_essay_csv(path)
    assert parsed.good["essay_id"].tolist() == [e.essay_id[0]]
    assert [(b.line, b.reason.split(" ")[0]) for b in parsed.bad] == [
        (4, "empty"), (5, "empty"), (6, "duplicate"), (7, "3")]
    missing = tmp_path / "m.csv"
    _write(missing, [["x", "y"]], header=("id", "text"))
    assert "missing column" in parse_essay_csv(missing).fatal


def test_parse_unterminated_quote_does_not_swallow_later_rows(tmp_path):
    # an unclosed quote must be reported, not silently absorb the rows after it into one text
    path = tmp_path / "q.csv"
    path.write_text('essay_id,full_text\na,fine\nb,"never closed\nc,third essay\n')
    parsed = parse_essay_csv(path)
    assert parsed.good["essay_id"].tolist() == ["a"]
    assert [(b.line, b.reason.split(" ")[0]) for b in parsed.bad] == [(3, "malformed")]


def test_sensor_scores_every_essay_exactly_once_across_restarts(env):
    cfg, essays, tmp = env["cfg"], env["essays"], env["tmp"]
    inbox, outbox = tmp / "inbox", tmp / "outbox"
    inbox.mkdir(exist_ok=True)
    home = tmp / "dagster_home"
    home.mkdir()
    rows = essays[["essay_id", "full_text"]].values.tolist()
    _write(inbox / "a.csv", rows[:6])
    _write(inbox / "b.csv", rows[6:10] + [["", "orphan text"], [rows[6][0], "dup"],
                                          [rows[11][0], ""]])
    shutil.copy(inbox / "a.csv", tmp / "a_copy.csv")

    with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
        reqs, cursor, _ = _tick(env, inst, None)
        assert len(reqs) == 2 and len({r.run_key for r in reqs}) == 2
        outs = _run_all(env, inst, reqs)
        assert sorted(o["scored"] for o in outs) == [4, 6]
        again, cursor, skip = _tick(env, inst, cursor)       # nothing new
        assert again == [] and skip

    # bad rows: moved aside with a report naming each one; good rows still scored
    report = next((tmp / "rejected").glob("b.*.report.txt")).read_text()
    original = next((tmp / "rejected").glob("b.*.csv")).read_text().splitlines()

    def line_of(prefix):  # 1-based line where a bad record starts (essays span lines)
        return next(i + 1 for i, ln in enumerate(original) if ln.startswith(prefix))

    assert f"line {line_of(',orphan text')}: essay_id='': empty essay_id" in report
    assert f"line {line_of(rows[6][0] + ',dup')}: essay_id={rows[6][0]!r}: duplicate" in report
    assert f"line {line_of(rows[11][0] + ',')}: essay_id={rows[11][0]!r}: empty essay text" \
        in report
    assert list((tmp / "rejected").glob("b.*.csv"))  # the original, kept for inspection
    assert not list(inbox.glob("*.csv"))              # processed files left the inbox

    # "daemon restart": a fresh instance on the same storage, the stored cursor
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
        _write(inbox / "c.csv", rows[12:20])
        shutil.copy(tmp / "a_copy.csv", inbox / "a_again.csv")   # same content as a.csv
        reqs, cursor, _ = _tick(env, inst, cursor)
        assert len(reqs) == 1 and reqs[0].tags["aes/inbox_file"] == "c.csv"
        _run_all(env, inst, reqs)
    # restart that lost its cursor: a_again.csv is requested again but not scored twice
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
        reqs, cursor, _ = _tick(env, inst, None)
        assert [r.tags["aes/inbox_file"] for r in reqs] == ["a_again.csv"]
        (out,) = _run_all(env, inst, reqs)
        assert out["skipped"] and out["scored"] == 0
        assert len(inst.get_runs()) == 4

    ids = _scored_ids(outbox)
    expected = [r[0] for r in rows[:10]] + [r[0] for r in rows[12:20]]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    # outputs equal a direct in-process scoring of the same essays
    scored = pd.concat(pd.read_csv(p, dtype={"essay_id": str})
                       for p in outbox.glob("*.scored.csv")).set_index("essay_id")
    direct = score_frame(OnnxScorer(env["ens"], env["members"]),
                         essays.set_index("essay_id").loc[expected].reset_index())
    assert (scored.loc[direct.essay_id, "score"].to_numpy() == direct.score).all()
    assert len(list((tmp / "history").glob("*.essays.csv"))) == 3
    assert cfg.serving.inbox_dir == str(inbox)


def test_rescore_history_job_and_triggers(env):
    cfg, defs, tmp = env["cfg"], env["defs"], env["tmp"]
    hist = tmp / "history"
    if not list(hist.glob("*.essays.csv")):
        pytest.skip("needs the history written by the sensor test")
    job = defs.get_job_def(RESCORE_JOB)
    with dg.DagsterInstance.ephemeral() as inst:
        res = job.execute_in_process(instance=inst)
        out = _output_meta(res)
        assert out["files"] == 3 and not any(f["skipped"] for f in out["detail"])
        again = _output_meta(job.execute_in_process(instance=inst))
        assert all(f["skipped"] for f in again["detail"])       # idempotent per ensemble
    folder = tmp / "outbox" / RESCORED / ensemble_tag(cfg)
    rescored = sorted(_scored_ids(folder))
    assert rescored == sorted(_scored_ids(tmp / "outbox"))
    # nightly schedule from config; the ensemble sensor fires on a new serving bundle
    sched = defs.get_schedule_def("nightly_rescore")
    assert sched.cron_schedule == cfg.serving.rescore_cron and sched.job_name == RESCORE_JOB
    sensor = defs.get_sensor_def("rescore_on_new_ensemble")
    with dg.DagsterInstance.ephemeral() as inst:
        inst.report_runless_asset_event(dg.AssetMaterialization("serving_bundle"))
        ctx = dg.build_sensor_context(instance=inst, definitions=defs)
        reqs = list(sensor(ctx) or [])
        assert len(reqs) == 1 and reqs[0].run_key.startswith("ensemble-")
