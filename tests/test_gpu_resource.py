"""GpuResource: Trainer kwargs, per-partition device assignment, and real DDP (gloo, 2 CPUs)."""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
import pytest
from lightning.pytorch.strategies import DDPStrategy

from aes_core.config import GpuSection, load_config
from aes_core.data import io
from aes_core.data.folds import build_folded
from aes_core.models.regressor import EssayRegressor
from aes_core.training.stages import FoldHeadJob, train_fold_head
from aes_resources.gpu import GPU_TAG, GpuResource, assign_device, visible_gpus
from tests.conftest import tiny_overrides


def test_cpu_trainer_kwargs():
    r = GpuResource.from_section(GpuSection(accelerator="cpu"))
    assert r.trainer_kwargs("0|mean") == {"accelerator": "cpu", "precision": "32-true",
                                          "devices": 1, "strategy": "auto"}
    assert r.inference_device() == "cpu" and r.amp_dtype() is None
    assert GpuResource(accelerator="cpu", precision="bf16-mixed").trainer_kwargs()[
        "precision"] == "bf16-mixed"


def test_several_devices_mean_ddp_for_one_partition():
    kw = GpuResource(accelerator="cpu", devices=2).trainer_kwargs("1|lstm")
    assert kw["devices"] == 2 and isinstance(kw["strategy"], DDPStrategy)
    assert kw["strategy"]._process_group_backend == "gloo"
    assert kw["strategy"]._start_method == "spawn"  # safe inside a Dagster run process
    plain = GpuResource(accelerator="cpu", devices=2, strategy="ddp").trainer_kwargs()
    assert plain["strategy"]._start_method == "popen"


def test_device_assignment_spreads_partitions_over_gpus():
    keys = [f"{f}|{h}" for f in range(5) for h in ("mean", "attention", "lstm", "weighted_layers")]
    picks = [assign_device(4, k) for k in keys]
    assert picks == [assign_device(4, k) for k in keys]  # stable across runs
    assert set(picks) == {0, 1, 2, 3}
    assert max(Counter(picks).values()) <= 10
    assert assign_device(4, "0|mean", {GPU_TAG: "6"}, assign_by="tag") == 2
    assert assign_device(4, "0|mean", {GPU_TAG: "6"}, assign_by="partition") == picks[0]
    assert assign_device(4, "0|mean", assign_by="none") == 0
    assert assign_device(1, "3|lstm") == 0
    with pytest.raises(ValueError, match="not an integer"):
        assign_device(2, None, {GPU_TAG: "x"}, assign_by="tag")
    with pytest.raises(ValueError, match="no GPU"):
        assign_device(0, "0|mean")


def test_visible_gpus_respects_cuda_visible_devices():
    assert visible_gpus(8, {}) == list(range(8))
    assert visible_gpus(8, {"CUDA_VISIBLE_DEVICES": "2,5"}) == [0, 1]
    assert visible_gpus(0, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus(0, {}) == []


def test_gpu_accelerator_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        GpuResource(accelerator="gpu").trainer_kwargs()


@pytest.mark.slow
def test_ddp_gloo_two_processes_trains_a_partition(tmp_path, tiny_backbone):
    over = tiny_overrides(tmp_path, tiny_backbone)
    over["folds"]["n_folds"] = 2
    over["train"] = {**over["train"], "stage1_epochs": 1, "stage2_epochs": 1,
                     "max_train_essays": 32}
    cfg = load_config(overrides=over)
    raw = io.load_train(cfg.data.train_path).sample(64, random_state=3)
    folded, _ = build_folded(raw, io.load_persuade(cfg.data.persuade_path), cfg.folds)
    gpu = GpuResource(accelerator="cpu", devices=2)
    job = FoldHeadJob(cfg, cfg.backbones[0], tiny_backbone, 0, "mean", tmp_path / "ddp",
                      gpu.trainer_kwargs("0|mean"), device=gpu.inference_device(),
                      log_fn=print, progress=False)
    result = train_fold_head(job, folded)
    n_train = min(32, int((folded.fold != 0).sum()))
    assert result.stage1.train_essays == n_train
    # DistributedSampler: each of the 2 ranks sees half the essays, in batches of 8
    assert result.stage1.global_step == math.ceil(math.ceil(n_train / 2) / 8)
    assert result.stage1_val_qwk is not None
    # stage 2 spawns its ranks again: a fresh strategy, a model that already scored here
    assert result.stage2 is not None and result.stage2.epochs_run == 1
    model = EssayRegressor.from_pretrained(result.model_dir)
    assert model.spec.head == "mean"
    oof = pd.read_parquet(result.oof_path)
    assert len(oof) == int((folded.fold == 0).sum())
