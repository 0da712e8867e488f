"""Data stage: raw tables in, the folded training table out."""


import dagster as dg
import pandas as pd

from aes_assets.configs import DataConfig, FoldsConfig, effective
from aes_assets.metadata import md, score_histogram
from aes_core.data import io
from aes_core.data.folds import build_folded
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings

GROUP = "data"


@dg.asset(group_name=GROUP, description="Scored training essays (essay_id, full_text, score).")
def raw_essays(context: dg.AssetExecutionContext, config: DataConfig,
               settings: PipelineSettings) -> pd.DataFrame:
    cfg = effective(settings.load().data, config)
    df = io.load_train(cfg.train_path)
    total = len(df)
    if cfg.max_train_essays and cfg.max_train_essays < total:
        df = df.sample(cfg.max_train_essays, random_state=cfg.sample_seed).reset_index(drop=True)
    context.add_output_metadata({
        "source": dg.MetadataValue.path(cfg.train_path),
        "rows": len(df), "rows_in_file": total,
        "score_histogram": score_histogram(df),
        "fingerprint": io.fingerprint(df),
    })
    return df


@dg.asset(group_name=GROUP,
          description="Essays to score (essay_id, full_text) with `score` where labels exist.")
def test_essays(context: dg.AssetExecutionContext, config: DataConfig,
                settings: PipelineSettings) -> pd.DataFrame:
    cfg = effective(settings.load().data, config)
    df = io.load_essays(cfg.test_path)
    df["score"] = pd.array([pd.NA] * len(df), dtype="Int64")
    labelled = False
    if cfg.test_labels_path:
        labels = io.load_labels(cfg.test_labels_path)
        unknown = sorted(set(labels.essay_id) - set(df.essay_id))
        if unknown:
            raise io.DataError(cfg.test_labels_path, f"label ids not in {cfg.test_path}: "
                               f"{unknown[:5]}", field="essay_id")
        df["score"] = df["essay_id"].map(labels.set_index("essay_id")["score"]).astype("Int64")
        labelled = True
    context.add_output_metadata({
        "source": dg.MetadataValue.path(cfg.test_path), "rows": len(df),
        "labelled": labelled, "labelled_rows": int(df["score"].notna().sum()),
        "fingerprint": io.fingerprint(df),
    })
    return df


@dg.asset(group_name=GROUP, description="PERSUADE reference texts with prompt names.")
def persuade_reference(context: dg.AssetExecutionContext, config: DataConfig,
                       settings: PipelineSettings) -> pd.DataFrame:
    cfg = effective(settings.load().data, config)
    df = io.load_persuade(cfg.persuade_path)
    context.add_output_metadata({
        "source": dg.MetadataValue.path(cfg.persuade_path), "rows": len(df),
        "prompts": md(df["prompt_name"].value_counts().rename("essays").to_frame()),
    })
    return df


@dg.asset(group_name=GROUP,
          description="Unscored texts for masked-LM pretraining only (never test essays).")
def unlabelled_essays(context: dg.AssetExecutionContext, config: DataConfig,
                      settings: PipelineSettings) -> pd.DataFrame:
    cfg = effective(settings.load().data, config)
    if not cfg.unlabelled_path:
        df = pd.DataFrame({"essay_id_comp": pd.Series(dtype=str),
                           "full_text": pd.Series(dtype=str)})
    else:
        df = io.load_unlabelled(cfg.unlabelled_path)
    context.add_output_metadata({"rows": len(df), "source": str(cfg.unlabelled_path)})
    return df


@dg.asset(group_name=GROUP, description="Train essays + prompt_name, flag and fold (MSKF).")
def folded_essays(context: dg.AssetExecutionContext, config: FoldsConfig,
                  settings: PipelineSettings, mlflow: MlflowTracker,
                  raw_essays: pd.DataFrame, persuade_reference: pd.DataFrame) -> pd.DataFrame:
    full = settings.load()
    cfg = effective(full.folds, config)
    df, report = build_folded(raw_essays, persuade_reference, cfg)
    hist = pd.crosstab(df["fold"], df["score"]).rename_axis(index="fold", columns="score")
    prompts = pd.crosstab(df["prompt_name"], df["fold"], margins=True)
    flags = pd.crosstab(df["fold"], df["flag"]).rename(columns={0: "flag 0", 1: "flag 1"})
    for note in report.notes:
        context.log.warning(note)
    fp = io.fingerprint(df)
    with mlflow.run("folded_essays", params={"folds": cfg.model_dump(), "data": full.data
                                             .model_dump()},
                    tags={"asset": "folded_essays", "data_fingerprint": fp}):
        pass
    context.add_output_metadata({
        "rows": len(df), "matched_in_persuade": report.matched,
        "unmatched": report.unmatched, "ambiguous_reference_texts": report.ambiguous_texts,
        "flag_rule": report.flag_rule, "flag_1_rows": report.flag_1,
        "score_histogram_per_fold": md(hist), "flags_per_fold": md(flags),
        "prompt_table": md(prompts), "fingerprint": fp,
        "notes": "; ".join(report.notes) or "none",
    })
    return df
