"""Typed results of the pipeline's stages: what one stage hands to the next.

Every stage output that another stage reads is one of these pydantic models (tables stay
DataFrames). The Dagster IO manager stores them as JSON with their type name, so a stored
result loads back as the same model; ``ARCHITECTURE.md``'s contract table is this module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StageResult(BaseModel):
    """Base of every stage result: unknown fields are errors, values are validated."""

    model_config = ConfigDict(extra="forbid")


class MlmBackbone(StageResult):
    """``{backbone}/mlm_backbone``: the encoder folder fine-tuning starts from."""

    backbone: str
    path: str = Field(description="HF folder (weights + tokenizer) to fine-tune")
    base_path: str = Field(description="the pretrained folder MLM started from")
    mlm_trained: bool
    reason: str = Field("", description="why MLM was skipped, when it was")
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    train_texts: int = 0
    holdout_texts: int = 0
    steps: int = 0
    seconds: float = 0.0


class StageInfo(StageResult):
    """One training stage of a fold x head partition."""

    best_val_qwk: float | None = None
    epochs_run: int = 0
    global_step: int = 0
    train_essays: int = 0
    val_essays: int = 0
    train_tokens: int = Field(0, description="tokens seen in training (all epochs)")
    seconds: float = 0.0
    steady_tokens_per_s: float | None = Field(
        None, description="training tokens per second from the first to the last training "
        "batch, all devices together (excludes start-up, validation excluded as run time)")
    resumed_from: str | None = None


class FoldHeadCheckpoint(StageResult):
    """``{backbone}/fold_head_checkpoints`` partition ``fold|head``: the trained member."""

    backbone: str
    head: str
    fold: int
    member: str
    model_dir: str = Field(description="EssayRegressor folder of the final model")
    oof_path: str = Field(description="parquet essay_id, pred (1..6) on all of fold i")
    stage1_val_qwk: float | None = None
    stage2_val_qwk: float | None = None
    kept_stage: Literal["stage1", "stage2"] = "stage1"
    fold_qwk: float
    fold_essays: int
    stage1: StageInfo
    stage2: StageInfo | None = None
    notes: list[str] = Field(default_factory=list)
    trainable_params: int = 0
    frozen_params: int = 0
    encoder_layers: int = 0
    train_tokens: int = 0
    seconds: float = 0.0
    peak_gpu_gib: float = 0.0
    device: str = "cpu"
    spec_hash: str = ""
    reused: bool = Field(False, description="an identical earlier result was reused")
    started_at: float = Field(0.0, description="Unix time the partition's training began")
    finished_at: float = Field(0.0, description="Unix time its result was complete")
    phase_seconds: dict[str, float] = Field(
        default_factory=dict, description="wall seconds of setup, stage1, stage2, predict_save")
    worker: str = Field("", description="process (and GPU) that trained it")
    essays_from_token_cache: int = Field(
        0, description="essay reads served by the step's shared token cache (an essay that "
        "two stages read counts twice)")
    essays_tokenized: int = Field(0, description="essay reads it had to tokenize itself")


class GbdtMemberResult(StageResult):
    """``gbdt_member``: the TF-IDF + LightGBM member (or why there is none)."""

    enabled: bool
    model_dir: str | None = None
    oof_qwk: float | None = None
    fold_qwk: list[float] = Field(default_factory=list)
    best_iterations: list[int] = Field(default_factory=list)
    n_essays: int = 0
    seconds: float = 0.0


class ScoringReportResult(StageResult):
    """``scoring_report``: where the report and its plots are."""

    oof_qwk: float
    nested_qwk: float | None = None
    report_dir: str
    summary_path: str
    plots: dict[str, str] = Field(default_factory=dict)
    per_prompt: list[dict[str, Any]] = Field(default_factory=list)
    flag_counts: dict[str, int] = Field(
        default_factory=dict, description="OOF essays per flag (+ 'any gaming flag')")
    qwk_after_flags: float | None = Field(None, description="OOF QWK after the flag policy")


class OnnxExport(StageResult):
    """``{backbone}/onnx_models`` partition: one exported fold model inside the bundle."""

    member: str
    backbone: str
    head: str
    fold: int
    member_dir: str = Field(description="model.onnx + model.safetensors + spec + tokenizer")
    onnx_path: str
    model_dir: str = Field(description="the checkpoint it was exported from")
    parity: dict[str, Any] = Field(default_factory=dict)


class TritonRepoResult(StageResult):
    """``triton_repo``: the generated model repository."""

    repo: str
    backend: str
    models: dict[str, list[str]] = Field(default_factory=dict)
    manifest_path: str


class SubmissionResult(StageResult):
    """What the submission asset wrote (the table itself is the asset's output)."""

    path: str
    rows: int
    scored_via: str
    test_qwk: float | None = None




class EssayFlaggerResult(StageResult):
    """``essay_flagger``: the saved flagger (``EssayFlagger.save``) the bundle serves with."""

    enabled: bool = Field(description="flags.enabled; without flags there is no folder")
    folder: str | None = None
    reference_essays: int = 0
    prompts: list[str] = Field(default_factory=list, description="prompts the model knows")
    seconds: float = 0.0
