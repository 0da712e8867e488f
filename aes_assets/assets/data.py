"""Data stage: raw tables in, the folded training table out."""


import dagster as dg
import pandas as pd

from aes_assets import keys
from aes_assets.configs import run_config
from aes_assets.metadata import code_version, config_metadata, file_stamp, md, score_histogram
from aes_core.config import AesConfig
from aes_core.data import io
from aes_core.data.folds import build_folded
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings

GROUP = "data"


def data_assets(cfg: AesConfig) -> list[dg.AssetsDefinition]:
    """The data stage for ``cfg`` (launchpad defaults and code versions follow the profile)."""
    DataRun = run_config(cfg, "data")
    FoldsRun = run_config(cfg, "folds")
    d = cfg.data

    @dg.asset(key=keys.RAW_ESSAYS, group_name=GROUP,
              code_version=code_version(d, file_stamp(d.train_path)),
              description="Scored training essays (essay_id, full_text, score).")
    def raw_essays(context: dg.AssetExecutionContext, config: DataRun,
                   settings: PipelineSettings) -> pd.DataFrame:
        cfg = settings.resolve(data=config).data
        df = io.load_train(cfg.train_path)
        total = len(df)
        if cfg.max_train_essays and cfg.max_train_essays < total:
            df = df.sample(cfg.max_train_essays, random_state=cfg.sample_seed).reset_index(
                drop=True)
        context.add_output_metadata({
            "source": dg.MetadataValue.path(cfg.train_path),
            "rows": len(df), "rows_in_file": total,
            "score_histogram": score_histogram(df),
            "fingerprint": io.fingerprint(df), **config_metadata(cfg),
        })
        return df

    @dg.asset(key=keys.TEST_ESSAYS, group_name=GROUP,
              code_version=code_version(d, file_stamp(d.test_path),
                                        file_stamp(d.test_labels_path)),
              description="Essays to score (essay_id, full_text) with `score` where labels "
                          "exist.")
    def test_essays(context: dg.AssetExecutionContext, config: DataRun,
                    settings: PipelineSettings) -> pd.DataFrame:
        cfg = settings.resolve(data=config).data
        df = io.load_essays(cfg.test_path)
        df["score"] = pd.array([pd.NA] * len(df), dtype="Int64")
        labelled = False
        if cfg.test_labels_path:
            labels = io.load_labels(cfg.test_labels_path)
            unknown = sorted(set(labels.essay_id) - set(df.essay_id))
            if unknown:
                raise io.DataError(cfg.test_labels_path, f"label ids not in {cfg.test_path}: "
                                   f"{unknown[:5]}", field="essay_id")
            df["score"] = df["essay_id"].map(labels.set_index("essay_id")["score"]).astype(
                "Int64")
            labelled = True
        context.add_output_metadata({
            "source": dg.MetadataValue.path(cfg.test_path), "rows": len(df),
            "labelled": labelled, "labelled_rows": int(df["score"].notna().sum()),
            "fingerprint": io.fingerprint(df), **config_metadata(cfg),
        })
        return df

    @dg.asset(key=keys.PERSUADE, group_name=GROUP,
              code_version=code_version(d, file_stamp(d.persuade_path)),
              description="PERSUADE reference texts with prompt names.")
    def persuade_reference(context: dg.AssetExecutionContext, config: DataRun,
                           settings: PipelineSettings) -> pd.DataFrame:
        cfg = settings.resolve(data=config).data
        df = io.load_persuade(cfg.persuade_path)
        context.add_output_metadata({
            "source": dg.MetadataValue.path(cfg.persuade_path), "rows": len(df),
            "prompts": md(df["prompt_name"].value_counts().rename("essays").to_frame()),
        })
        return df

    @dg.asset(key=keys.UNLABELLED, group_name=GROUP,
              code_version=code_version(d, file_stamp(d.unlabelled_path)),
              description="Unscored texts for masked-LM pretraining (and pseudo-labels); "
                          "never test essays.")
    def unlabelled_essays(context: dg.AssetExecutionContext, config: DataRun,
                          settings: PipelineSettings) -> pd.DataFrame:
        cfg = settings.resolve(data=config).data
        if not cfg.unlabelled_path:
            df = pd.DataFrame({"essay_id_comp": pd.Series(dtype=str),
                               "full_text": pd.Series(dtype=str)})
        else:
            df = io.load_unlabelled(cfg.unlabelled_path)
        context.add_output_metadata({"rows": len(df), "source": str(cfg.unlabelled_path)})
        return df

    @dg.asset(key=keys.FOLDED, group_name=GROUP, code_version=code_version(cfg.folds),
              description="Train essays + prompt_name, flag and fold (MSKF on prompt x score).")
    def folded_essays(context: dg.AssetExecutionContext, config: FoldsRun,
                      settings: PipelineSettings, mlflow: MlflowTracker,
                      raw_essays: pd.DataFrame, persuade_reference: pd.DataFrame
                      ) -> pd.DataFrame:
        full = settings.resolve(folds=config)
        cfg = full.folds
        df, report = build_folded(raw_essays, persuade_reference, cfg)
        hist = pd.crosstab(df["fold"], df["score"]).rename_axis(index="fold", columns="score")
        prompts = pd.crosstab(df["prompt_name"], df["fold"], margins=True)
        flags = pd.crosstab(df["fold"], df["flag"]).rename(columns={0: "flag 0", 1: "flag 1"})
        for note in report.notes:
            context.log.warning(note)
        fp = io.fingerprint(df)
        with mlflow.run("folded_essays", params={"folds": cfg.model_dump(),
                                                 "data": full.data.model_dump()},
                        tags={"asset": "folded_essays", "data_fingerprint": fp,
                              "dagster_run_id": context.run_id}):
            pass
        context.add_output_metadata({
            "rows": len(df), "matched_in_persuade": report.matched,
            "unmatched": report.unmatched, "ambiguous_reference_texts": report.ambiguous_texts,
            "flag_rule": report.flag_rule, "flag_1_rows": report.flag_1,
            "score_histogram_per_fold": md(hist), "flags_per_fold": md(flags),
            "prompt_table": md(prompts), "fingerprint": fp,
            "notes": "; ".join(report.notes) or "none", **config_metadata(cfg),
        })
        return df

    return [raw_essays, test_essays, persuade_reference, unlabelled_essays, folded_essays]
