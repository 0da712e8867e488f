"""Two-stage recipe: data selection per stage, target smoothing, resume, reuse of a completed
partition, starting over on a changed spec, and the stage-2 guard."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch

from aes_core import logs
from aes_core.config import load_config
from aes_core.contracts import FoldHeadCheckpoint
from aes_core.data import io
from aes_core.data.folds import build_folded
from aes_core.models.regressor import EssayRegressor
from aes_core.training.datamodule import EssayDataset, PadCollate, predict_logits
from aes_core.training.module import lr_lambda, optimizer_impl, param_groups
from aes_core.training.stages import (
    FoldHeadJob,
    build_regressor,
    smooth_targets,
    stage1_split,
    stage2_split,
    train_fold_head,
)
from tests.conftest import records_of, tiny_overrides
from tests.training_support import Interrupt

LIBRARY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "transformers.modeling_utils")


@pytest.fixture(scope="module")
def folded() -> pd.DataFrame:
    cfg = load_config("cpu-small")
    raw = io.load_train(cfg.data.train_path)
    df, _ = build_folded(raw, io.load_persuade(cfg.data.persuade_path), cfg.folds)
    return df


def test_quiet_libraries_filters_lightning_chatter_and_verbose_restores_it(monkeypatch):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    monkeypatch.setattr(logs, "_choice", None)
    with records_of(*LIBRARY_LOGGERS) as got:
        logs.quiet_libraries()
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try litmodels")
        rank_zero_info("Using bf16 Automatic Mixed Precision (AMP)")  # not chatter: kept
        logs.quiet_libraries(verbose=True)
        logs.quiet_libraries()  # library code keeps the entry point's explicit choice
        rank_zero_info("GPU available: False, used: False")
        logs.quiet_libraries(verbose=False)
        rank_zero_info("TPU available: False, using: 0 TPU cores")
    assert [r.getMessage() for r in got] == ["Using bf16 Automatic Mixed Precision (AMP)",
                                             "GPU available: False, used: False"]


def test_stage_data_never_trains_on_its_validation_essays(folded):
    n_folds = int(folded["fold"].max()) + 1
    assert folded["flag"].nunique() == 2
    for i in range(n_folds):
        s1, s2 = stage1_split(folded, i), stage2_split(folded, i)
        assert not s1.notes and s2.skipped is None
        # stage 1: train = folds != i, val = fold i and flag 1
        assert set(s1.train["fold"]) == set(range(n_folds)) - {i}
        assert (s1.val["fold"] == i).all() and (s1.val["flag"] == 1).all()
        assert len(s1.val) == int(((folded.fold == i) & (folded.flag == 1)).sum())
        # stage 2: train = folds != i and flag 1, val = fold i and flag 0
        assert (s2.train["fold"] != i).all() and (s2.train["flag"] == 1).all()
        assert len(s2.train) == int(((folded.fold != i) & (folded.flag == 1)).sum())
        assert (s2.val["fold"] == i).all() and (s2.val["flag"] == 0).all()
        for s in (s1, s2):
            assert not set(s.train["essay_id"]) & set(s.val["essay_id"])
            # no essay of fold i (the OOF fold) is ever trained on
            assert not set(s.train["essay_id"]) & set(folded.loc[folded.fold == i, "essay_id"])


def test_empty_flag_sets_are_reported(folded):
    no_flag1 = folded.assign(flag=0)
    s1 = stage1_split(no_flag1, 0)
    assert "validating on all" in s1.notes[0] and (s1.val["fold"] == 0).all()
    assert len(s1.val) == int((folded.fold == 0).sum())
    s2 = stage2_split(no_flag1, 0)
    assert s2.skipped and "no flag-1 essays" in s2.skipped
    s2b = stage2_split(folded.assign(flag=1), 0)
    assert s2b.skipped and "flag-0 essays" in s2b.skipped
    with pytest.raises(ValueError, match="fold 9 has no essays"):
        stage1_split(folded, 9)


def test_smooth_targets():
    scores = np.array([1, 3, 6])
    p = np.array([0.2, 0.4, 0.9])
    got = smooth_targets(scores, p, 0.5)
    np.testing.assert_allclose(got, 0.5 * (scores - 1) / 5 + 0.5 * p, rtol=1e-6)
    np.testing.assert_allclose(smooth_targets(scores, p, 0.0), (scores - 1) / 5, rtol=1e-6)
    np.testing.assert_allclose(smooth_targets(scores, p, 1.0), p, rtol=1e-6)


def test_schedules_and_param_groups(tiny_backbone, tmp_path):
    f = lr_lambda("linear", 10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    c = lr_lambda("cosine", 0, 100)
    assert c(0) == pytest.approx(1.0) and c(50) == pytest.approx(0.5) and c(100) < 1e-9
    cfg = load_config(overrides={**tiny_overrides(tmp_path, tiny_backbone),
                                 "train": {"freeze_layers": 1, "layerwise_lr_decay": 0.5,
                                           "lr": 1e-3, "head_lr": 1e-2,
                                           "reinit_top_layers": 1}})
    from aes_core.models.backbone import load_tokenizer

    tok = load_tokenizer(tiny_backbone)
    job = FoldHeadJob(cfg, cfg.backbones[0], tiny_backbone, 0, "mean", tmp_path)
    model, counts = build_regressor(job, tok)
    assert counts["encoder_layers"] == 2
    assert all(not p.requires_grad for p in model.encoder.embeddings.parameters())
    enc_layers = model.encoder.encoder.layer
    assert all(not p.requires_grad for p in enc_layers[0].parameters())
    assert all(p.requires_grad for p in enc_layers[1].parameters())
    groups = param_groups(model, cfg.train)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.head.out.weight)]["lr"] == pytest.approx(1e-2)
    assert by_id[id(model.head.out.bias)]["weight_decay"] == 0.0
    ln = enc_layers[1].output.LayerNorm.weight
    assert by_id[id(ln)]["weight_decay"] == 0.0 and by_id[id(ln)]["lr"] == pytest.approx(1e-3)
    assert by_id[id(enc_layers[1].output.dense.weight)]["weight_decay"] > 0
    assert not any(id(p) in by_id for p in enc_layers[0].parameters())
    # re-initialised top layer: LayerNorm back to ones
    assert torch.allclose(ln, torch.ones_like(ln))
    # AdamW: the fused kernel only where every trainable parameter is on CUDA
    assert optimizer_impl(model, cfg.train) == {}  # CPU: PyTorch's default

    class OnCuda(torch.nn.Module):  # what optimizer_impl reads of a model moved to CUDA
        def __init__(self, flags):
            super().__init__()
            self.flags = flags

        def parameters(self, recurse=True):
            from types import SimpleNamespace

            return iter(SimpleNamespace(requires_grad=r, is_cuda=c) for r, c in self.flags)

    unclipped = cfg.train.model_copy(update={"gradient_clip_val": 0.0})
    assert optimizer_impl(OnCuda([(True, True), (False, False)]), unclipped) == {"fused": True}
    assert optimizer_impl(OnCuda([(True, True), (True, False)]), unclipped) == {}
    off = unclipped.model_copy(update={"fused_optimizer": False})
    assert optimizer_impl(OnCuda([(True, True)]), off) == {}
    # Lightning refuses to clip gradients for an optimizer that unscales them itself
    assert cfg.train.gradient_clip_val > 0
    assert optimizer_impl(OnCuda([(True, True)]), cfg.train) == {}


def test_dynamic_padding_and_length_sorted_predictions(tiny_backbone):
    from aes_core.models.backbone import load_tokenizer
    from aes_core.models.regressor import RegressorSpec

    tok = load_tokenizer(tiny_backbone)
    texts = ["short essay.", "a much longer essay " * 20, "medium length essay " * 5]
    ds = EssayDataset(texts, tok, max_length=48, targets=[0.0, 0.5, 1.0])
    assert ds.lengths.max() == 48
    batch = PadCollate(tok.pad_token_id)([ds[0], ds[2]])
    assert batch["input_ids"].shape == (2, ds.lengths[2])  # padded to the longest in the batch
    assert batch["attention_mask"].sum(1).tolist() == [ds.lengths[0], ds.lengths[2]]
    model = EssayRegressor.from_backbone(tiny_backbone, RegressorSpec(head="mean"))
    sorted_preds = predict_logits(model, ds, tok, batch_size=2)
    one_by_one = [predict_logits(model, EssayDataset([t], tok, 48), tok, 1)[0] for t in texts]
    np.testing.assert_allclose(sorted_preds, one_by_one, atol=1e-5)


class StartProbe(pl.Callback):
    def __init__(self):
        self.starts: list[tuple[int, int]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.starts.append((trainer.current_epoch, trainer.global_step))


@pytest.fixture(scope="module")
def tiny_folded(folded) -> pd.DataFrame:
    return folded.groupby("fold").sample(30, random_state=0).reset_index(drop=True)


def _job(tmp: Path, backbone: Path, out: Path, **train) -> FoldHeadJob:
    over = tiny_overrides(tmp, backbone)
    over["train"] = {**over["train"], **train}
    cfg = load_config(overrides=over)
    return FoldHeadJob(cfg, cfg.backbones[0], backbone, 1, "mean", out,
                       {"accelerator": "cpu", "devices": 1}, progress=False)


def test_interrupted_partition_resumes_from_last_checkpoint(tmp_path, tiny_backbone, tiny_folded):
    out = tmp_path / "part"
    job = _job(tmp_path, tiny_backbone, out, stage1_epochs=2, stage2_epochs=1,
               max_train_essays=40, early_stopping_patience=5)
    steps_per_epoch = 5  # 40 essays / batch 8
    job.callbacks = [Interrupt(at_step=steps_per_epoch + 2)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_fold_head(job, tiny_folded)
    assert (out / "stage1" / "last.ckpt").exists()
    assert not (out / "result.json").exists() and not (out / "stage1" / "done.json").exists()

    probe = StartProbe()
    job.callbacks = [probe]
    result = train_fold_head(job, tiny_folded)
    # stage 1 restarted at epoch 1 from last.ckpt, stage 2 started from scratch
    assert isinstance(result, FoldHeadCheckpoint) and not result.reused
    assert result.stage1.resumed_from == str(out / "stage1" / "last.ckpt")
    assert probe.starts[0] == (1, steps_per_epoch)
    assert probe.starts[1] == (0, 0)
    assert result.stage1.global_step == 2 * steps_per_epoch
    assert not any("starting over" in n for n in result.notes)  # same spec: resumed
    assert (out / "result.json").exists()
    reloaded = EssayRegressor.from_pretrained(result.model_dir)
    assert reloaded.spec.head == "mean"
    oof = pd.read_parquet(result.oof_path)
    assert set(oof["essay_id"]) == set(tiny_folded.loc[tiny_folded.fold == 1, "essay_id"])
    assert oof["pred"].between(1, 6).all()

    # the completed partition of the same spec is reused: nothing trains again
    probe2 = StartProbe()
    job.callbacks = [probe2]
    again = train_fold_head(job, tiny_folded)
    assert again.reused and probe2.starts == []
    assert again.model_copy(update={"reused": False}) == result
    # train.reuse_completed false: the same spec is trained again, from scratch
    retrain = _job(tmp_path, tiny_backbone, out, stage1_epochs=2, stage2_epochs=1,
                   max_train_essays=40, early_stopping_patience=5, reuse_completed=False)
    probe3 = StartProbe()
    retrain.callbacks = [probe3]
    redone = train_fold_head(retrain, tiny_folded)
    assert not redone.reused and probe3.starts[0] == (0, 0)
    assert redone.spec_hash == result.spec_hash
    assert "starting over: re-making a completed run" in redone.notes

    # a changed spec (another learning rate) starts the folder over
    changed = _job(tmp_path, tiny_backbone, out, stage1_epochs=2, stage2_epochs=1,
                   max_train_essays=40, early_stopping_patience=5, lr=5e-4)
    probe4 = StartProbe()
    changed.callbacks = [probe4]
    fresh = train_fold_head(changed, tiny_folded)
    assert "starting over: its configuration, data or code changed" in fresh.notes
    assert fresh.stage1.resumed_from is None and probe4.starts[0] == (0, 0)
    assert not fresh.reused and fresh.spec_hash != result.spec_hash
    assert json.loads((out / "result.json").read_text())["spec_hash"] == fresh.spec_hash


class ReverseStage2(pl.Callback):
    """Negates the head's output before stage 2 validates: stage 2's scores come out reversed,
    so it validates worse than stage 1 did (a stage 2 that hurts)."""

    def on_validation_start(self, trainer, pl_module) -> None:
        if Path(trainer.default_root_dir).name == "stage2":
            with torch.no_grad():
                pl_module.model.head.out.weight.neg_()
                pl_module.model.head.out.bias.neg_()


def _head_weight(state: dict) -> torch.Tensor:
    return next(v for k, v in state.items() if k.endswith("head.out.weight"))


@pytest.mark.parametrize("guard", [True, False])
def test_stage2_guard_keeps_stage1_weights_when_stage2_is_worse(tmp_path, tiny_backbone,
                                                                  tiny_folded, guard):
    from safetensors.torch import load_file

    words = {1: "apple", 2: "river", 3: "stone", 4: "cloud", 5: "tiger", 6: "piano"}
    revealing = tiny_folded.assign(full_text=[f"{words[s]} " * 20 for s in tiny_folded.score])
    out = tmp_path / "p"
    job = _job(tmp_path, tiny_backbone, out, stage1_epochs=4, stage2_epochs=1, lr=1e-2,
               head_lr=1e-2, max_train_essays=40, stage2_guard=guard, keep_checkpoints="all",
               early_stopping_patience=5)
    job.callbacks = [ReverseStage2()]
    result = train_fold_head(job, revealing)
    final = _head_weight(load_file(str(Path(result.model_dir) / "model.safetensors")))
    stage1, stage2 = (_head_weight(torch.load(out / s / "best.ckpt", weights_only=False)[
        "state_dict"]) for s in ("stage1", "stage2"))
    assert not torch.equal(stage1, stage2)
    assert result.stage2 is not None and result.stage2_val_qwk < 0  # reversed scores
    if guard:
        assert result.kept_stage == "stage1" and torch.equal(final, stage1)
        (note,) = [n for n in result.notes if "stage2_guard" in n]
        assert f"QWK {result.stage2_val_qwk:.4f} < " in note and "kept stage 1's weights" in note
        assert float(note.split(" < ")[1].split(")")[0]) > result.stage2_val_qwk
    else:
        assert result.kept_stage == "stage2" and torch.equal(final, stage2)
        assert not any("stage2_guard" in n for n in result.notes)


def test_stage2_skipped_without_flag1(tmp_path, tiny_backbone, tiny_folded):
    job = _job(tmp_path, tiny_backbone, tmp_path / "p", stage1_epochs=1, max_train_essays=16)
    with records_of(*LIBRARY_LOGGERS) as chatter:
        result = train_fold_head(job, tiny_folded.assign(flag=0))
    # Lightning's banners/tips and transformers' load report are filtered (aes_core.logs)
    assert [r.getMessage() for r in chatter] == []
    assert result.stage2 is None and result.stage2_val_qwk is None
    assert result.kept_stage == "stage1"
    assert any("stage 2 skipped" in n for n in result.notes)
    assert any("validating on all" in n for n in result.notes)
    assert result.stage1.val_essays == int((tiny_folded.fold == 1).sum())


def test_pseudo_labels_come_from_a_teacher_that_never_saw_fold_i(tmp_path, tiny_backbone,
                                                                 tiny_folded):
    """Stage 2's pseudo-labels for fold i come from the partition's stage-1 model, trained on
    folds != i: flipping every label of fold i leaves them unchanged. Unlabelled copies of
    labelled essays (a fold-i essay among them) are never pseudo-labelled."""
    from aes_core.config import SAMPLE_DIR
    from aes_core.data.normalize import normalize_text
    from aes_core.training.stages import PSEUDO_FILE

    fresh = io.load_unlabelled(SAMPLE_DIR / "unlabelled_essays.csv.gz").head(8)
    fold_i_text = tiny_folded.loc[tiny_folded.fold == 1, "full_text"].iloc[0]
    copies = pd.DataFrame({"essay_id_comp": ["copy-i", "copy-0"], "full_text": [
        "  " + fold_i_text.replace(" ", "\u00a0 ") + "\r\n",  # the same text, normalized
        tiny_folded.loc[tiny_folded.fold == 0, "full_text"].iloc[0]]})
    unlabelled = pd.concat([copies, fresh], ignore_index=True)
    flipped = tiny_folded.copy()
    flipped.loc[flipped.fold == 1, "score"] = 7 - flipped.loc[flipped.fold == 1, "score"]
    runs = {}
    for name, folded in (("as_is", tiny_folded), ("fold_i_flipped", flipped)):
        job = _job(tmp_path, tiny_backbone, tmp_path / name, stage1_epochs=1, stage2_epochs=1,
                   max_train_essays=40, pseudo_label_essays=10, stage2_guard=False)
        result = train_fold_head(job, folded, unlabelled)
        runs[name] = (result, pd.read_parquet(tmp_path / name / PSEUDO_FILE))
    (result, pseudo), (_, pseudo_flipped) = runs["as_is"], runs["fold_i_flipped"]
    assert len(pseudo) == 8 and (pseudo["fold"] == 1).all()  # 10 allowed: the copies left out
    assert (pseudo["teacher"] == "stage1").all()
    np.testing.assert_allclose(pseudo["pseudo_score"], pseudo_flipped["pseudo_score"], atol=1e-5)
    labelled = set(tiny_folded["full_text"].map(normalize_text))
    assert not set(pseudo["full_text"].map(normalize_text)) & labelled
    assert normalize_text(copies["full_text"][0]) == normalize_text(fold_i_text)
    assert pseudo["pseudo_score"].between(1, 6).all()
    np.testing.assert_allclose(pseudo["target"], (pseudo["pseudo_score"] - 1) / 5)
    base = min(40, int(((tiny_folded.fold != 1) & (tiny_folded.flag == 1)).sum()))
    assert result.stage2.train_essays == base + 8  # stage 2 trained on them
    assert any("8 pseudo-labelled essays" in n for n in result.notes)


def test_last_checkpoint_follows_every_epoch_not_only_improvements(tmp_path, tiny_backbone,
                                                                   tiny_folded):
    """With learning rates too small to move a prediction, val QWK never improves after the
    first epoch; last.ckpt (what a resumed stage starts from, and where the stage's epochs
    and steps are read) must still be the last epoch's."""
    out = tmp_path / "flat"
    job = _job(tmp_path, tiny_backbone, out, stage1_epochs=3, stage2_epochs=0,
               max_train_essays=40, early_stopping_patience=5, lr=1e-12, head_lr=1e-12)
    result = train_fold_head(job, tiny_folded)
    steps_per_epoch = 5  # 40 essays / batch 8
    assert result.stage1.epochs_run == 3
    assert result.stage1.global_step == 3 * steps_per_epoch


def test_ordinal_loss_trains_both_stages(tmp_path, tiny_backbone, tiny_folded):
    """train.loss: ordinal runs the two-stage recipe (stage 2 on soft targets) and saves a
    model whose thresholds moved from where they started."""
    out = tmp_path / "ordinal"
    job = _job(tmp_path, tiny_backbone, out, loss="ordinal", max_train_essays=40,
               stage1_epochs=2, head_lr=5e-2)
    result = train_fold_head(job, tiny_folded)
    assert result.stage1.epochs_run >= 1
    assert result.stage2 is not None and result.stage2.epochs_run >= 1
    model = EssayRegressor.from_pretrained(result.model_dir)
    assert model.spec.loss == "ordinal"
    assert not torch.allclose(model.head.ordinal_bias, torch.linspace(-2.0, 2.0, 5))
    oof = pd.read_parquet(result.oof_path)
    assert oof["pred"].between(1, 6).all() and oof["pred"].nunique() > 1


@pytest.mark.parametrize("enabled", [False, True])
def test_each_training_process_sets_the_cudnn_attention_switch(tiny_backbone, tmp_path,
                                                               enabled):
    """train.cudnn_attention reaches the process that trains (setup runs in every DDP rank)."""
    from aes_core.models.backbone import load_tokenizer
    from aes_core.training.module import RegressorModule

    over = tiny_overrides(tmp_path, tiny_backbone)
    over["train"]["cudnn_attention"] = enabled
    cfg = load_config(overrides=over)
    job = FoldHeadJob(cfg, cfg.backbones[0], tiny_backbone, 0, "mean", tmp_path)
    model, _ = build_regressor(job, load_tokenizer(tiny_backbone))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(not enabled)
        RegressorModule(model, cfg.train).setup("fit")
        assert torch.backends.cuda.cudnn_sdp_enabled() is enabled
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
