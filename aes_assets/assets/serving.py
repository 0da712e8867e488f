"""Serving stage: ``submission`` scores ``test_essays`` through a real Triton server.

Triton serves when ``serving.use_triton`` and the server starts; otherwise (or if it fails to
start) the in-process ONNX Runtime scorer gives the same scores from the same exported models.
"""

from pathlib import Path

import dagster as dg
import pandas as pd

from aes_assets.configs import ServingConfig, effective
from aes_assets.metadata import md, score_histogram
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.serving.base import score_frame
from aes_core.serving.onnx_scorer import OnnxScorer
from aes_core.serving.submission import evaluate_submission, write_submission
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.triton import TritonResource

GROUP = "serving"


@dg.asset(
    group_name=GROUP, ins={"test_essays": dg.AssetIn(), "triton_repo": dg.AssetIn()},
    description="submission.csv (essay_id, score 1..6, every test id once) scored through "
                "Triton (or in-process ONNX Runtime, identical scores); QWK and confusion "
                "matrix in the metadata when test labels exist.",
    kinds={"csv"},
)
def submission(context: dg.AssetExecutionContext, config: ServingConfig,
               settings: PipelineSettings, triton: TritonResource, mlflow: MlflowTracker,
               test_essays: pd.DataFrame, triton_repo: dict) -> pd.DataFrame:
    full = settings.load()
    scfg = effective(full.serving, config)
    ensemble = EnsembleArtifact.model_validate(triton_repo["ensemble"])
    essays = test_essays[["essay_id", "full_text"]]
    scored, via, fallback = None, "onnxruntime (in-process)", ""
    if scfg.use_triton:
        from aes_core.serving.triton import TritonError, TritonScorer

        try:
            with triton.serve(triton_repo["repo"], log=context.log) as server:
                url = server if isinstance(server, str) else server.url
                client = None if isinstance(server, str) else server.client()
                scorer = TritonScorer(url, ensemble, batch_size=scfg.request_batch_size,
                                      client=client)
                scored = score_frame(scorer, essays)
                via = f"triton ({url})"
        except TritonError as e:
            fallback = str(e).splitlines()[0]
            context.log.warning(f"Triton unavailable, scoring in-process instead: {e}")
    if scored is None:
        scorer = OnnxScorer(ensemble, triton_repo["member_dirs"], triton_repo.get("gbdt_dir"),
                            batch_size=scfg.request_batch_size,
                            intra_op_threads=scfg.ort_threads, show_progress=True)
        scored = score_frame(scorer, essays)
    df = scored.to_frame()
    path = write_submission(df, essays["essay_id"].astype(str).tolist(),
                            Path(full.storage_root) / "submission.csv")
    meta = {"path": dg.MetadataValue.path(str(path)), "rows": len(df), "scored_via": via,
            "score_histogram": score_histogram(df)}
    if fallback:
        meta["triton_fallback_reason"] = fallback
    ev = evaluate_submission(df, test_essays)
    if ev is not None:
        meta.update({"test_qwk": ev["qwk"], "labelled_rows": ev["n"],
                     "confusion_matrix": md(ev["confusion"])})
        with mlflow.run("submission", tags={"asset": "submission", "scored_via": via}) as run:
            if run is not None:
                import mlflow as mlflow_lib

                mlflow_lib.log_metric("test_qwk", ev["qwk"])
    context.add_output_metadata(meta)
    return df
