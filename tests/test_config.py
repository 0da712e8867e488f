"""The typed configuration tree and its profiles."""

from pathlib import Path

import pytest

from aes_core.config import AesConfig, ConfigError, load_config, resolve_section
from tests.conftest import write_profile


@pytest.mark.parametrize("name", ["cpu-small", "gpu-full", "gpu-two-backbones"])
def test_named_profiles_load(name):
    cfg = load_config(name)
    assert isinstance(cfg, AesConfig)
    assert cfg.profile == name
    assert cfg.backbones and cfg.heads.heads


def test_default_profile_uses_bundled_sample():
    cfg = load_config()
    assert Path(cfg.data.train_path).exists()
    assert "data/sample" in cfg.data.train_path


def test_unknown_key_names_the_field(tmp_path):
    path = write_profile(tmp_path, {"train": {"learning_rate": 1e-4}})
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert "train.learning_rate" in str(e.value)
    assert "Extra inputs are not permitted" in str(e.value)
    assert str(path) in str(e.value)


def test_bad_value_names_the_field(tmp_path):
    path = write_profile(tmp_path, {"folds": {"n_folds": 1}})
    with pytest.raises(ConfigError, match=r"folds\.n_folds"):
        load_config(str(path))


def test_bad_literal_names_the_field(tmp_path):
    path = write_profile(tmp_path, {"train": {"loss": "hinge"}})
    with pytest.raises(ConfigError, match=r"train\.loss"):
        load_config(str(path))


def test_duplicate_backbones_rejected(tmp_path):
    path = write_profile(tmp_path, {"backbones": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="duplicate"):
        load_config(str(path))


def test_missing_profile_lists_known():
    with pytest.raises(ConfigError, match="cpu-small"):
        load_config("no-such-profile")


def test_not_yaml_mapping(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(p))


def test_overrides_merge_deeply():
    cfg = load_config("cpu-small", {"train": {"lr": 3e-5}})
    assert cfg.train.lr == 3e-5
    assert cfg.train.batch_size == load_config("cpu-small").train.batch_size


def test_run_values_always_win_and_none_means_the_profile():
    profile = load_config("gpu-full").folds
    assert profile.n_folds == 5  # differs from the built-in default (3)
    # a value equal to the built-in default is still applied
    assert resolve_section(profile, {"n_folds": 3}).n_folds == 3
    # None means "the profile's value"; unknown launchpad keys are ignored only if None
    merged = resolve_section(profile, {"n_folds": None, "seed": 123})
    assert merged.n_folds == 5 and merged.seed == 123
    with pytest.raises(ConfigError, match="n_folds"):
        resolve_section(profile, {"n_folds": 1})


def test_loaded_config_is_frozen():
    cfg = load_config("cpu-small")
    with pytest.raises(ValueError, match="frozen"):
        cfg.train.lr = 1.0
    assert cfg.model_copy(update={"profile": "x"}).profile == "x"


def test_multiprocess_steps_start_from_a_preloaded_forkserver(tmp_path, monkeypatch):
    """Steps fork from a server that imported the definitions once; the job a step rebuilds
    is the run's profile even when $AES_PROFILE (inherited by the server) names another."""
    from aes_assets.definitions import pipeline_job
    from aes_assets.jobs import DEFINITIONS_MODULE, executor_config

    cfg = load_config("gpu-full")
    mp = executor_config(cfg)["execution"]["config"]["multiprocess"]
    assert mp["start_method"] == {"forkserver": {"preload_modules": [
        DEFINITIONS_MODULE, "aes_core.training.stages"]}}  # torch & co. once per run
    assert cfg.gpu.worker_start == "fork"  # partition workers fork from the preloaded step
    assert cfg.gpu.mps == "auto"  # MPS where the driver utilities have it
    spawn = cfg.model_copy(update={"run": cfg.run.model_copy(update={"start_method": "spawn"})})
    assert executor_config(spawn)["execution"]["config"]["multiprocess"]["start_method"] == {
        "spawn": {}}
    monkeypatch.setenv("AES_PROFILE", "cpu-small")
    job = pipeline_job("gpu-full")
    assert len(job.partitions_def.get_partition_keys()) == 20  # 5 folds x 4 heads: not cpu-small


def _two_backbones(**beta) -> dict:
    return {"heads": {"heads": ["mean", "attention"]}, "train": {"lr": 1e-4, "batch_size": 16},
            "backbones": [{"name": "alpha"}, {"name": "beta", **beta}]}


@pytest.mark.parametrize("beta, field, message", [
    ({"heads": ["mean", "maxpool"]}, "backbones[beta].heads", "maxpool"),
    ({"heads": ["mean", "mean"]}, "backbones[beta].heads", "duplicate"),
    ({"heads": []}, "backbones.1.heads", "at least 1 item"),
    ({"train": {"learning_rate": 3e-5}}, "backbones[beta].train.learning_rate",
     "Extra inputs are not permitted"),
    ({"train": {"batch_size": 0}}, "backbones[beta].train.batch_size", "greater than or equal"),
    ({"train": {"loss": "hinge"}}, "backbones[beta].train.loss", "hinge"),
])
def test_backbone_heads_and_train_are_validated_at_load(beta, field, message):
    with pytest.raises(ConfigError) as e:
        load_config("cpu-small", _two_backbones(**beta))
    assert field in str(e.value) and message in str(e.value)


def test_heads_for_and_train_for_answer_per_backbone():
    cfg = load_config("cpu-small", _two_backbones(
        heads=["mean"], train={"lr": "3.0e-5", "batch_size": 4, "accumulate_grad_batches": 2}))
    assert cfg.heads_for("alpha") == ["mean", "attention"]
    assert cfg.heads_for(cfg.backbone("beta")) == ["mean"]
    assert cfg.train_for("alpha") == cfg.train  # no settings of its own: the train section
    beta = cfg.train_for("beta")
    assert (beta.lr, beta.batch_size, beta.accumulate_grad_batches) == (3e-5, 4, 2)
    assert beta.model_dump(exclude={"lr", "batch_size", "accumulate_grad_batches"}) == \
        cfg.train.model_dump(exclude={"lr", "batch_size", "accumulate_grad_batches"})
    with pytest.raises(KeyError, match="gamma"):
        cfg.heads_for("gamma")
    # the configuration (with its backbones' own settings) survives the JSON a step receives
    assert AesConfig.model_validate_json(cfg.model_dump_json()).train_for("beta") == beta


def test_backbones_without_own_settings_dump_as_before():
    """No ``heads`` / ``train`` keys in the dump: config hashes, code versions and partition
    specs of existing profiles do not change."""
    cfg = load_config("gpu-full")
    assert not {"heads", "train"} & set(cfg.backbones[0].model_dump())
    own = load_config("cpu-small", _two_backbones(heads=["mean"], train={"lr": 3e-5}))
    assert own.backbone("beta").model_dump()["heads"] == ["mean"]
    assert own.backbone("beta").encoder_only().model_dump() == \
        own.backbone("beta").model_copy(update={"heads": None, "train": {}}).model_dump()
    assert own.backbone("alpha").model_dump() == own.backbone("alpha").encoder_only().model_dump()


def test_the_student_keeps_the_train_section():
    from aes_core.student import student_backbone, student_train_section

    cfg = load_config("cpu-small", {**_two_backbones(train={"lr": 3e-5}),
                                    "student": {"backbone": "beta", "lr": 2e-4}})
    bb = student_backbone(cfg)
    assert bb.name == "beta" and not bb.train
    assert cfg.train_for(bb) == cfg.train
    assert student_train_section(cfg).lr == 2e-4


def test_a_profile_extends_another(tmp_path):
    """``extends`` starts from the named profile; sections merge, lists replace, and a path is
    read beside the extending file."""
    (tmp_path / "base.yaml").write_text(
        "extends: gpu-full\nprofile: base\ntrain: {lr: 2.0e-5}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nbackbones: [{name: other, path: some/folder}]\n"
        "gbdt: {n_estimators: 70}\n")
    full, child = load_config("gpu-full"), load_config(str(tmp_path / "child.yaml"))
    assert child.profile == "child"  # its own name, not a parent's
    assert (child.train.lr, child.gbdt.n_estimators) == (2.0e-5, 70)
    assert child.train.batch_size == full.train.batch_size
    assert child.gbdt.learning_rate == full.gbdt.learning_rate
    assert [b.name for b in child.backbones] == ["other"]  # the list replaced, not merged
    assert child.data.train_path == full.data.train_path  # the parent's paths, resolved


def test_the_two_backbone_profile_is_gpu_full_plus_mpnet():
    full, two = load_config("gpu-full"), load_config("gpu-two-backbones")
    assert [b.name for b in two.backbones] == ["minilm", "mpnet"]
    assert two.heads_for(two.backbones[1]) == ["mean", "attention"]
    assert two.backbones[1].workers_per_gpu == 5 < full.gpu.workers_per_gpu  # fits in memory
    assert two.backbones[0].workers_per_gpu is None
    assert two.heads_for(two.backbones[0]) == full.heads.heads
    mpnet = two.train_for(two.backbones[1])
    assert mpnet.lr == 3.0e-5 < full.train.lr  # swept on mpnet's OOF
    assert mpnet.stage1_epochs == full.train.stage1_epochs  # the rest of gpu-full's recipe
    assert mpnet.stage2_epochs == 0  # mpnet: stage 1 only
    assert mpnet.batch_size * mpnet.accumulate_grad_batches == full.train.batch_size
    assert not two.backbones[1].use_mlm and two.backbones[0].use_mlm  # as swept: no MLM
    assert full.train.stage2_epochs == 1
    assert two.train_for(two.backbones[0]) == full.train
    assert two.model_dump(exclude={"backbones", "profile"}) == full.model_dump(
        exclude={"backbones", "profile"})


@pytest.mark.parametrize("text, message", [
    ("extends: loop.yaml\n", "cycle"),
    ("extends: no-such-profile\n", "not found"),
    ("extends: [gpu-full, cpu-small]\n", "one profile"),
])
def test_bad_extends_names_the_problem(tmp_path, text, message):
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(tmp_path / "loop.yaml"))


def test_gpu_mps_reads_yaml_on_and_off(tmp_path):
    """A bare ``on`` / ``off`` in YAML is a boolean; gpu.mps takes it as the word."""
    for word in ("on", "off", "auto"):
        f = tmp_path / f"{word}.yaml"
        f.write_text(f"gpu:\n  mps: {word}\n")
        assert load_config(f).gpu.mps == word
    f.write_text("gpu:\n  mps: sometimes\n")
    with pytest.raises(ConfigError, match="mps"):
        load_config(f)
