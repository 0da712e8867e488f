"""Serving stage: ``submission`` scores ``test_essays`` from the serving bundle through a real
Triton server (in-process ONNX Runtime when no server is usable: identical scores), flagged
by the bundle's flagger (flagged scores capped, the model's own kept in ``model_score``)."""


from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from aes_assets import keys
from aes_assets.configs import run_config
from aes_assets.metadata import code_version, config_metadata, md, score_histogram
from aes_core.config import AesConfig
from aes_core.contracts import TritonRepoResult
from aes_core.metrics import qwk
from aes_core.serving.base import score_frame
from aes_core.serving.manifest import Bundle, ServingManifest
from aes_core.serving.submission import evaluate_submission, write_submission
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.triton import TritonResource

GROUP = "serving"
MEMBER_PREDICTIONS = "test_member_predictions.parquet"


def submission_asset(cfg: AesConfig) -> dg.AssetsDefinition:
    ServingRun = run_config(cfg, "serving")

    @dg.asset(
        key=keys.SUBMISSION, group_name=GROUP,
        ins={"test_essays": dg.AssetIn(key=keys.TEST_ESSAYS),
             "serving_bundle": dg.AssetIn(key=keys.BUNDLE),
             "triton_repo": dg.AssetIn(key=keys.TRITON_REPO)},
        code_version=code_version(cfg.serving),
        description="submission.csv (essay_id, score 1..6, every test id once; then flags, "
                    "flag_evidence, model_score) scored from the serving bundle through Triton "
                    "(or in-process ONNX Runtime, identical scores) and flagged by the bundle's "
                    "flagger; QWK, per-member QWK and confusion matrix when test labels exist.",
        kinds={"csv"},
    )
    def submission(context: dg.AssetExecutionContext, config: ServingRun,
                   settings: PipelineSettings, triton: TritonResource, mlflow: MlflowTracker,
                   test_essays: pd.DataFrame, serving_bundle: ServingManifest,
                   triton_repo: TritonRepoResult) -> pd.DataFrame:
        full = settings.resolve(serving=config)
        bundle = Bundle.load(full.bundle_dir)
        essays = test_essays[["essay_id", "full_text"]]
        flagger = bundle.flagger()
        with triton.scorer(bundle, full.serving, log=context.log) as choice:
            before = choice.metrics()
            scored = score_frame(choice.scorer, essays, flagger)
            stages = choice.stages_since(before)
        df = scored.to_frame()
        storage = Path(full.storage_root)
        path = write_submission(df, essays["essay_id"].astype(str).tolist(),
                                storage / "submission.csv")
        preds = scored.to_frame(with_members=True)
        preds.to_parquet(storage / MEMBER_PREDICTIONS, index=False)
        meta = {"submission_csv": dg.MetadataValue.path(str(path)), "rows": len(df),
                "scored_via": choice.via, "score_histogram": score_histogram(df),
                "member_predictions": dg.MetadataValue.path(str(storage / MEMBER_PREDICTIONS)),
                **config_metadata(full.serving)}
        if choice.fallback_reason:
            meta["triton_fallback_reason"] = choice.fallback_reason
        if stages:  # where the scoring spent its time (Triton: ms per request per stage)
            meta["scoring_stages"] = dg.MetadataValue.json(stages)
        if scored.flagged:
            meta.update(flag_metadata(df))
        ev = evaluate_submission(df, test_essays)
        if ev is not None:
            y = test_essays.set_index("essay_id")["score"]
            labelled = preds[preds["essay_id"].map(y).notna()]
            truth = labelled["essay_id"].map(y).astype(int).to_numpy()
            per_member = {m: qwk(truth, np.clip(np.rint(labelled[m]), 1, 6))
                          for m in scored.members}
            if scored.flagged:
                unflagged = evaluate_submission(df.assign(score=df["model_score"]), test_essays)
                meta["test_qwk_model_score"] = unflagged["qwk"]
            meta.update({"test_qwk": ev["qwk"], "labelled_rows": ev["n"],
                         "confusion_matrix": md(ev["confusion"]),
                         **{f"test_qwk_rounded/{m}": q for m, q in per_member.items()}})
            with mlflow.run("submission", tags={"asset": "submission",
                                                "scored_via": choice.via,
                                                "dagster_run_id": context.run_id}) as run:
                run.metrics({"test_qwk": ev["qwk"],
                             **{f"test_qwk_rounded.{m}": q for m, q in per_member.items()}})
            context.log.info(f"submission: test QWK {ev['qwk']:.4f} via {choice.via}")
        context.add_output_metadata(meta)
        return df

    return submission


def flag_metadata(df: pd.DataFrame) -> dict:
    """Essays per flag and how many scores the flag policy capped."""
    from aes_core.flags import FLAG_NAMES
    from aes_core.flags.flagger import FLAG_SEP

    names = [set(f.split(FLAG_SEP)) for f in df["flags"]]
    counts = {f: sum(f in n for n in names) for f in FLAG_NAMES}
    return {"flag_counts": dg.MetadataValue.json(counts),
            "flagged_essays": int((df["flags"] != "").sum()),
            "capped_scores": int((df["score"] != df["model_score"]).sum())}
