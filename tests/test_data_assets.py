"""Data assets and their checks, materialized by a real Dagster instance."""

import dagster as dg
import mlflow
import pandas as pd
import pytest

from aes_assets.definitions import build_definitions
from tests.conftest import write_profile

DATA_ASSETS = ["raw_essays", "test_essays", "persuade_reference", "unlabelled_essays",
               "folded_essays"]


def _materialize(profile, instance, selection=DATA_ASSETS, raise_on_error=True,
                 run_config=None):
    defs = build_definitions(str(profile))
    assets = list(defs.assets) + list(defs.asset_checks or [])
    return dg.materialize(assets, selection=selection, instance=instance,
                          resources=defs.resources, raise_on_error=raise_on_error,
                          run_config=run_config)


def _fold_config_field(defs, name):
    job = defs.resolve_implicit_global_asset_job_def()
    ops = job.run_config_schema.config_type.fields["ops"].config_type.fields
    return ops["folded_essays"].config_type.fields["config"].config_type.fields[name]


def test_launchpad_shows_the_profile_and_a_default_valued_override_applies(tmp_path):
    """The profile sets n_folds 4 (built-in default 3): the launchpad shows 4, and a run that
    sets n_folds back to 3 - the built-in default - gets 3 folds, checked against 3."""
    profile = write_profile(tmp_path, {"storage_root": str(tmp_path / "s"),
                                       "mlflow_tracking_uri": f"sqlite:///{tmp_path}/m.db",
                                       "folds": {"n_folds": 4}})
    defs = build_definitions(str(profile))
    assert _fold_config_field(defs, "n_folds").default_value == 4
    with dg.instance_for_test() as instance:
        res = _materialize(profile, instance, run_config={
            "ops": {"folded_essays": {"config": {"n_folds": 3}}}})
        folded = res.output_for_node("folded_essays")
        assert sorted(folded["fold"].unique()) == [0, 1, 2]
        assert _check_results(res)["folded_one_fold_each"]
        meta = instance.get_latest_materialization_event(
            dg.AssetKey("folded_essays")).asset_materialization.metadata
        assert meta["config"].value["FoldSection"]["n_folds"] == 3  # recorded with the run
        res = _materialize(profile, instance)  # no launchpad value: the profile's 4
        assert res.output_for_node("folded_essays")["fold"].nunique() == 4


def _check_results(result):
    evals = [e.event_specific_data for e in result.all_events
             if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return {e.check_name: e.passed for e in evals}


def test_sample_profile_materializes_with_checks(tmp_path):
    profile = write_profile(tmp_path, {"storage_root": str(tmp_path / "s"),
                                       "mlflow_tracking_uri": f"sqlite:///{tmp_path}/m.db"})
    with dg.instance_for_test() as instance:
        result = _materialize(profile, instance)
        assert result.success
        folded = result.output_for_node("folded_essays")
        raw = result.output_for_node("raw_essays")
        assert len(folded) == len(raw) == 900
        assert set(folded.columns) >= {"essay_id", "full_text", "score", "prompt_name", "flag",
                                       "fold"}
        assert sorted(folded["fold"].unique()) == [0, 1, 2]
        checks = _check_results(result)
        assert checks and all(checks.values()), checks
        assert {"raw_essays_schema", "folded_schema", "folded_one_fold_each", "folded_balance",
                "test_essays_contract"} <= set(checks)
        mat = instance.get_latest_materialization_event(dg.AssetKey("folded_essays"))
        meta = mat.asset_materialization.metadata
        assert meta["rows"].value == 900
        assert "fraction" in meta["flag_rule"].value
        assert "score_histogram_per_fold" in meta and "prompt_table" in meta
        # stored as parquet by the IO manager, readable without Dagster
        stored = pd.read_parquet(tmp_path / "s" / "tables" / "folded_essays.parquet")
        assert stored["essay_id"].tolist() == folded["essay_id"].tolist()
        test = result.output_for_node("test_essays")
        assert test["score"].notna().all()


def test_mlflow_records_config_commit_and_fingerprint(tmp_path):
    profile = write_profile(tmp_path, {"storage_root": str(tmp_path / "s"),
                                       "mlflow_tracking_uri": f"sqlite:///{tmp_path}/m.db",
                                       "folds": {"n_folds": 4}})
    with dg.instance_for_test() as instance:
        assert _materialize(profile, instance).success
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    runs = mlflow.search_runs(experiment_names=["aes"], output_format="list")
    run = next(r for r in runs if r.info.run_name == "folded_essays")
    assert run.data.params["folds.n_folds"] == "4"
    assert run.data.params["data.train_path"].endswith("train.csv.gz")
    assert len(run.data.tags["git_commit"]) >= 7
    assert len(run.data.tags["data_fingerprint"]) == 16
    assert run.data.tags["version.torch"].startswith("2.")


def test_rematerializing_is_safe(tmp_path):
    profile = write_profile(tmp_path, {"storage_root": str(tmp_path / "s"),
                                       "mlflow_tracking_uri": f"sqlite:///{tmp_path}/m.db"})
    with dg.instance_for_test() as instance:
        first = _materialize(profile, instance).output_for_node("folded_essays")
        second = _materialize(profile, instance).output_for_node("folded_essays")
    pd.testing.assert_frame_equal(first, second)


def test_bad_input_fails_the_run_naming_the_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("essay_id,full_text,score\na,fine,3\nb,also fine,7\n")
    profile = write_profile(tmp_path, {"storage_root": str(tmp_path / "s"),
                                       "mlflow_tracking_uri": f"sqlite:///{tmp_path}/m.db",
                                       "data": {"train_path": str(bad)}})
    with dg.instance_for_test() as instance:
        result = _materialize(profile, instance, ["raw_essays"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    msg = failure.event_specific_data.error.cause.message if failure.event_specific_data.error \
        .cause else failure.event_specific_data.error.message
    assert "bad.csv" in msg and "row 2" in msg and "'score'" in msg


@pytest.mark.slow
def test_shared_data_materializes(tmp_path, shared_data):
    profile = write_profile(tmp_path, {
        "storage_root": str(tmp_path / "s"), "mlflow_tracking_uri": f"sqlite:///{tmp_path}/m.db",
        "folds": {"n_folds": 5},
        "data": {"train_path": str(shared_data / "aes2/train.csv.gz"),
                 "test_path": str(shared_data / "aes2/test.csv.gz"),
                 "test_labels_path": str(shared_data / "aes2/test_score.csv.gz"),
                 "persuade_path": str(shared_data / "persuade/persuade_reference.csv.gz"),
                 "unlabelled_path": str(shared_data / "persuade/unlabelled_essays.csv.gz")}})
    with dg.instance_for_test() as instance:
        result = _materialize(profile, instance)
    assert result.success
    folded = result.output_for_node("folded_essays")
    assert len(folded) == 5397 and folded["fold"].nunique() == 5
    assert (folded["prompt_name"] != "Unknown").mean() > 0.99
    assert all(_check_results(result).values())
