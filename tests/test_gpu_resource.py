"""GpuResource: Trainer kwargs, per-partition device assignment, and real DDP (gloo, 2 CPUs)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from aes_core.config import GpuSection, load_config
from aes_core.data import io
from aes_core.data.folds import build_folded
from aes_core.models.regressor import EssayRegressor
from aes_core.training.stages import FoldHeadJob, train_fold_head
from aes_resources.gpu import GPU_TAG, GpuResource, assign_device, visible_gpus
from tests.conftest import build_tiny_bert, tiny_overrides


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
    # global batches of 2 x 8 essays, each rank training on its half of every one
    assert result.stage1.global_step == math.ceil(n_train / 16)
    assert result.stage1_val_qwk is not None
    # stage 2 spawns its ranks again: a fresh strategy, a model that already scored here
    assert result.stage2 is not None and result.stage2.epochs_run == 1
    model = EssayRegressor.from_pretrained(result.model_dir)
    assert model.spec.head == "mean"
    oof = pd.read_parquet(result.oof_path)
    assert len(oof) == int((folded.fold == 0).sum())


class SaveFinalWeights(Callback):
    """Rank 0 saves the module's weights when fit ends (spawned ranks hand nothing back)."""

    def __init__(self, path: Path):
        self.path = path

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save(pl_module.state_dict(), self.path)


@pytest.mark.slow
@pytest.mark.parametrize("group_batches", [0, 2])
def test_two_ranks_of_batch_4_train_as_one_process_of_batch_8(tmp_path, group_batches):
    """Global batches: 2 gloo ranks x 4 essays reach the weights of 1 process x 8 after 2
    epochs (dropout off, same seed, 32 training essays: every global batch splits 4 + 4)."""
    backbone = build_tiny_bert(tmp_path / "bert", dropout=0.0)
    over = tiny_overrides(tmp_path, backbone)
    cfg = load_config(overrides=over)
    raw = io.load_train(cfg.data.train_path).sample(72, random_state=3)
    folded, _ = build_folded(raw, io.load_persuade(cfg.data.persuade_path), cfg.folds)
    runs = {}
    for devices, batch_size in ((1, 8), (2, 4)):
        over["train"] = {**over["train"], "stage1_epochs": 2, "stage2_epochs": 0,
                         "max_train_essays": 32, "batch_size": batch_size,
                         "length_group_batches": group_batches}
        cfg = load_config(overrides=over)
        gpu = GpuResource(accelerator="cpu", devices=devices)
        weights = tmp_path / f"final{devices}.pt"
        job = FoldHeadJob(cfg, cfg.backbones[0], backbone, 0, "mean", tmp_path / str(devices),
                          gpu.trainer_kwargs("0|mean"), device=gpu.inference_device(),
                          callbacks=[SaveFinalWeights(weights)], progress=False)
        result = train_fold_head(job, folded)
        assert result.stage1.train_essays == 32
        runs[devices] = torch.load(weights), result.stage1_val_qwk
    (w1, qwk1), (w2, qwk2) = runs[1], runs[2]
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    print(f"max abs weight difference, 1 x 8 vs 2 x 4 (group_batches={group_batches}): "
          f"{diff:.2e}")
    assert diff < 1e-4
    assert qwk1 == pytest.approx(qwk2, abs=1e-6)


def test_partitions_alternate_gpus_with_a_mix_of_heads():
    """Head-major order handed out to alternating GPUs: each GPU trains every head (fold-major
    order would put all of one head on one GPU)."""
    from aes_assets.partitions import head_major, partition_key

    heads = ["mean", "attention", "lstm", "weighted_layers"]
    keys = head_major([partition_key(f, h) for f in range(5) for h in heads])
    assert keys[:6] == ["0|mean", "1|mean", "2|mean", "3|mean", "4|mean", "0|attention"]
    per_gpu = [Counter(k.split("|")[1] for k in keys[g::2]) for g in (0, 1)]
    assert all(set(c) == set(heads) and max(c.values()) <= 3 for c in per_gpu)
    assert per_gpu[0]["lstm"] + per_gpu[1]["lstm"] == 5


def test_pinned_workers_of_each_gpu_share_their_own_cpu_block(monkeypatch):
    """``pin_cpus``: GPU g's workers run on the g-th block of the step's CPUs (what a step on
    one GPU with that share would get); off, workers keep the step's whole affinity."""
    import os

    import aes_resources.gpu as gpu_mod
    from aes_core.training.parallel import cpu_blocks

    monkeypatch.setattr(GpuResource, "use_gpu", lambda self: True)
    monkeypatch.setattr(gpu_mod, "visible_gpus", lambda: [0, 1])
    monkeypatch.setattr(gpu_mod, "usable_cpus", lambda: 32)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16, 48)))
    slots = GpuResource(workers_per_gpu=3, pin_cpus=True).worker_slots(6)
    assert [(s.gpu, s.cpus) for s in slots[:2]] == [(0, tuple(range(16, 32))),
                                                    (1, tuple(range(32, 48)))]
    assert {s.cpus for s in slots if s.gpu == 1} == {tuple(range(32, 48))}
    assert all(s.cpus is None for s in GpuResource(workers_per_gpu=3).worker_slots(6))
    assert cpu_blocks(3, range(7)) == [(0, 1, 2), (3, 4), (5, 6)]
    with pytest.raises(ValueError, match="cannot split 2 CPU"):
        cpu_blocks(3, [0, 1])


def test_a_backbone_may_run_fewer_workers_per_gpu(monkeypatch):
    import aes_resources.gpu as gpu_mod

    monkeypatch.setattr(GpuResource, "use_gpu", lambda self: True)
    monkeypatch.setattr(gpu_mod, "visible_gpus", lambda: [0])
    gpu = GpuResource(workers_per_gpu=10)
    assert len(gpu.worker_slots(20)) == 10
    assert len(gpu.worker_slots(20, workers_per_gpu=5)) == 5
    cfg = load_config("cpu-small", {"backbones": [
        {"name": "minilm"}, {"name": "big", "path": "var/models/big", "workers_per_gpu": 5}]})
    assert [b.workers_per_gpu for b in cfg.backbones] == [None, 5]


def test_worker_settings_leave_weights_up_to_date():
    """How many workers share a GPU changes no weights: code versions (what Dagster's
    staleness reads) stay; precision changes what training computes, so it does not."""
    import dagster as dg

    from aes_assets.assets.backbone import mlm_backbone_asset
    from aes_assets.assets.training import fold_head_asset

    def versions(overrides: dict) -> dict:
        cfg = load_config("cpu-small", overrides)
        b = cfg.backbones[0]
        return {**mlm_backbone_asset(cfg, b).code_versions_by_key,
                **fold_head_asset(cfg, b).code_versions_by_key}

    base = versions({})
    assert versions({"gpu": {"workers_per_gpu": 7, "mps": "on", "threads_per_worker": 2}}) == base
    own = load_config("cpu-small").backbones[0].model_dump()
    assert versions({"backbones": [{**own, "workers_per_gpu": 3}]}) == base
    mlm = dg.AssetKey(["minilm", "mlm_backbone"])  # its partitions follow it through lineage
    assert versions({"gpu": {"precision": "16-mixed"}})[mlm] != base[mlm]


def test_out_of_memory_failures_say_what_to_lower():
    from aes_core.training.parallel import JobFailure, out_of_memory_hint

    oom = JobFailure(0, 'Traceback:\n  File "x.py", line 1\ntorch.OutOfMemoryError: CUDA out of '
                        'memory. Tried to allocate 768.00 MiB.')
    hint = out_of_memory_hint([oom], "mpnet", 10)
    assert "10 partition(s) sharing a GPU" in hint
    assert "backbones[mpnet].workers_per_gpu" in hint
    assert out_of_memory_hint([JobFailure(1, "ValueError: bad")], "mpnet", 10) == ""
