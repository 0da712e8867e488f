"""AesIOManager on a remote (fsspec ``memory://``) base: typed stage results and tables round
trip, and a single-run backfill's ``{partition: value}`` output is stored per partition."""

import json
import uuid

import dagster as dg
import pandas as pd
import pytest
from upath import UPath

from aes_assets.pipeline import RANGE_END, RANGE_START
from aes_core.contracts import GbdtMemberResult, StageInfo
from aes_resources.storage import AesIOManager, decode, encode

PARTS = dg.MultiPartitionsDefinition({
    "fold": dg.StaticPartitionsDefinition(["0", "1"]),
    "head": dg.StaticPartitionsDefinition(["lstm", "mean"]),
})
RESULT = GbdtMemberResult(enabled=True, model_dir="/models/gbdt", oof_qwk=0.71,
                          fold_qwk=[0.7, 0.72], best_iterations=[40, 55], n_essays=120)
TABLE = pd.DataFrame({"essay_id": ["a", "b", "c"], "score": [1, 4, 6],
                      "pred": [1.25, 3.5, 5.75], "flag": pd.array([0, 1, 0], dtype="int8")})


def _stage_info(pk: str) -> StageInfo:
    fold, head = pk.split("|")
    return StageInfo(global_step=int(fold), train_essays=len(head), resumed_from=pk)


@dg.asset
def gbdt_member():
    return RESULT


@dg.asset
def essays_table():
    return TABLE


@dg.asset
def reader(gbdt_member, essays_table):
    return {"result_type": type(gbdt_member).__name__, "result": gbdt_member.model_dump(),
            "table": essays_table.to_dict("list"), "dtypes": essays_table.dtypes.astype(str)
            .to_dict()}


@dg.asset(partitions_def=PARTS, backfill_policy=dg.BackfillPolicy.single_run())
def per_partition(context):
    out = {pk: _stage_info(pk) for pk in context.partition_keys}
    return out if len(out) > 1 else next(iter(out.values()))


@dg.asset(partitions_def=PARTS)
def one_partition(context, per_partition):
    assert isinstance(per_partition, StageInfo)
    return {"partition": context.partition_key, "loaded": per_partition.resumed_from}


@dg.asset
def all_partitions(per_partition):
    return {pk: v.model_dump() for pk, v in per_partition.items()}


ASSETS = [gbdt_member, essays_table, reader, per_partition, one_partition, all_partitions]


@pytest.fixture
def base() -> str:
    return f"memory://aes-{uuid.uuid4().hex[:8]}/tables"


def _run(base: str, selection: list[str], **kw) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=selection,
                          resources={"io_manager": AesIOManager(base_uri=base)},
                          instance=dg.DagsterInstance.ephemeral(), **kw)


def test_stage_result_and_table_round_trip_through_a_remote_base(base, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land on the local disk
    assert _run(base, ["gbdt_member", "essays_table"]).success
    stored = json.loads((UPath(base) / "gbdt_member.json").read_text())
    assert stored["__type__"] == "aes_core.contracts:GbdtMemberResult"
    assert stored["data"]["fold_qwk"] == [0.7, 0.72]
    assert (UPath(base) / "essays_table.parquet").exists()
    res = _run(base, ["reader"])  # a second run: its inputs come from the memory store only
    out = res.output_for_node("reader")
    assert out["result_type"] == "GbdtMemberResult" and out["result"] == RESULT.model_dump()
    pd.testing.assert_frame_equal(pd.DataFrame(out["table"]).astype(out["dtypes"]), TABLE)
    assert out["dtypes"]["flag"] == "int8" and out["dtypes"]["score"] == "int64"
    assert list(tmp_path.iterdir()) == []


def test_single_run_backfill_stores_each_partition(base):
    pks = PARTS.get_partition_keys()
    res = _run(base, ["per_partition"], tags={RANGE_START: pks[0], RANGE_END: pks[-1]})
    assert res.success
    for pk in pks:  # one file per partition (fold/head), each its own typed value
        fold, head = pk.split("|")
        path = UPath(base) / "per_partition" / fold / f"{head}.json"
        assert decode(".json", path.read_bytes()) == _stage_info(pk)
    assert sorted(m.partition for m in res.asset_materializations_for_node("per_partition")) \
        == sorted(pks)
    # a downstream partition reads its own value; an unpartitioned reader gets them all
    one = _run(base, ["one_partition"], partition_key="1|lstm")
    assert one.output_for_node("one_partition") == {"partition": "1|lstm", "loaded": "1|lstm"}
    every = _run(base, ["all_partitions"]).output_for_node("all_partitions")
    assert every == {pk: _stage_info(pk).model_dump() for pk in pks}


def test_backfill_output_missing_a_partition_is_an_error(base):
    @dg.asset(name="per_partition", partitions_def=PARTS,
              backfill_policy=dg.BackfillPolicy.single_run())
    def short(context):
        return {pk: _stage_info(pk) for pk in context.partition_keys[1:]}

    pks = PARTS.get_partition_keys()
    res = dg.materialize([short], resources={"io_manager": AesIOManager(base_uri=base)},
                         instance=dg.DagsterInstance.ephemeral(),
                         tags={RANGE_START: pks[0], RANGE_END: pks[-1]}, raise_on_error=False)
    assert not res.success
    error = str(res.get_step_failure_events()[0].event_specific_data.error)
    assert f"per_partition: no value for partition(s) ['{pks[0]}']" in error


def test_only_project_types_are_loaded():
    suffix, raw = encode(RESULT)
    assert decode(suffix, raw) == RESULT
    forged = json.dumps({"__type__": "os:system", "data": "echo hi"}).encode()
    with pytest.raises(ValueError, match="refusing to load stored type 'os:system'"):
        decode(".json", forged)
