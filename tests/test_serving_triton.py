"""A real tritonserver (nvidia-pytriton binary, Python backend) on a generated repository.

One server start for the whole module. Checks: config.pbtxt content of both variants, scores
through Triton equal the in-process ONNX Runtime scores, malformed requests each get a clear
error and the server keeps serving, load_scorer picks Triton or falls back.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from aes_core.config import load_config
from aes_core.export.triton_repo import repo_bundle_version, write_triton_repo
from aes_core.serving.base import score_frame
from aes_core.serving.loader import IN_PROCESS, load_bundle, load_scorer, open_scorer
from aes_core.serving.onnx_scorer import OnnxScorer
from aes_core.serving.triton import TritonError, TritonScorer, TritonServer, server_ready
from tests.serving_support import (
    commit_bundle,
    export_checkpoints,
    make_checkpoints,
    sample_essays,
    spread_ensemble_for,
)

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

HEADS = ["mean", "lstm"]
N_FOLDS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone):
    tmp = tmp_path_factory.mktemp("triton")
    cfg = load_config(overrides={"storage_root": str(tmp / "storage"), "serving": {
        "bundle_dir": str(tmp / "bundle"), "triton_repo": str(tmp / "repo"),
        "instance_count": 1, "max_batch_size": 8, "request_batch_size": 8}})
    exports = export_checkpoints(cfg.bundle_dir, make_checkpoints(
        tmp / "checkpoints", tiny_backbone, HEADS, N_FOLDS))
    essays = sample_essays(24)
    ens = spread_ensemble_for(exports, essays, N_FOLDS, weights=[0.3, 0.7])
    bundle = commit_bundle(cfg.bundle_dir, ens, exports)
    members = bundle.member_dirs()
    write_triton_repo(cfg.serving.triton_repo, bundle, cfg.serving)
    server = TritonServer(cfg.serving.triton_repo, http_port=0, grpc_port=0, metrics_port=0,
                          startup_timeout_s=120)
    server.start()
    try:
        yield {"cfg": cfg, "ens": ens, "bundle": bundle, "members": members,
               "exports": exports, "essays": essays, "server": server,
               "client": server.client(), "tmp": tmp}
    finally:
        server.stop()
    assert not server.running


def _text_input(texts, shape=None):
    arr = np.array([t.encode() for t in texts], dtype=np.object_).reshape(shape or (-1, 1))
    inp = tritonclient_http.InferInput("TEXT", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def test_config_pbtxt_python_variant(served):
    repo = served["server"].repo
    member = (repo / "tiny__lstm__f1" / "config.pbtxt").read_text()
    assert 'backend: "python"' in member and "max_batch_size: 8" in member
    assert 'name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ]' in member
    assert 'name: "logits" data_type: TYPE_FP32 dims: [ 1 ]' in member
    assert "dynamic_batching { max_queue_delay_microseconds: 2000 }" in member
    assert "instance_group [ { count: 1 kind: KIND_CPU } ]" in member
    assert (repo / "tiny__lstm__f1" / "1" / "model.onnx").exists()
    assert (repo / "tiny__lstm__f1" / "1" / "model.py").exists()
    scorer = (repo / "scorer" / "config.pbtxt").read_text()
    assert 'name: "TEXT" data_type: TYPE_STRING dims: [ 1 ]' in scorer
    assert 'name: "SCORE" data_type: TYPE_INT32' in scorer
    assert 'name: "MEMBERS" data_type: TYPE_FP64 dims: [ 2 ]' in scorer
    assert 'string_value: "tiny__mean,tiny__lstm"' in scorer
    version = served["bundle"].version()
    assert f'key: "bundle_version" value {{ string_value: "{version}" }}' in scorer
    # self-contained: tokenizer and ensemble copied into the repository
    assert (repo / "scorer" / "1" / "tokenizers" / "tiny" / "tokenizer_config.json").exists()
    assert (repo / "scorer" / "1" / "ensemble.json").exists()


def test_config_pbtxt_native_variant(served, tmp_path):
    cfg = served["cfg"]
    native = cfg.serving.model_copy(update={"triton_variant": "native", "instance_count": 3})
    manifest = write_triton_repo(tmp_path / "native", served["bundle"], native)
    member = (tmp_path / "native" / "tiny__mean__f0" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in member and "backend" not in member
    assert "dims: [ 1 ] reshape: { shape: [ ] }" in member
    assert "instance_group [ { count: 3 kind: KIND_GPU } ]" in member
    assert not (tmp_path / "native" / "tiny__mean__f0" / "1" / "model.py").exists()
    assert manifest.plans == []  # no engines given: ONNX models everywhere
    assert sorted(manifest.model_names()) == sorted(
        ["tiny__mean__f0", "tiny__mean__f1", "tiny__lstm__f0", "tiny__lstm__f1", "scorer"])


def test_triton_scores_equal_in_process(served):
    essays, ens = served["essays"], served["ens"]
    local = score_frame(OnnxScorer(ens, served["members"], batch_size=8), essays)
    remote_scorer = TritonScorer(served["server"].url, ens, batch_size=8,
                                 client=served["client"])
    remote = score_frame(remote_scorer, essays)
    np.testing.assert_allclose(remote.member_preds, local.member_preds, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(remote.score, local.score)
    assert len(set(local.score.tolist())) >= 3  # thresholds spread the scores
    # the server's own blend and thresholds (BLS) agree with score_frame
    texts = essays["full_text"].tolist()[:8]
    out = remote_scorer.infer(texts)
    ref = score_frame(OnnxScorer(ens, served["members"], batch_size=8), essays.head(8))
    assert out["SCORE"].dtype == np.int32
    np.testing.assert_array_equal(out["SCORE"], ref.score)
    np.testing.assert_allclose(out["BLENDED"], ref.blended, atol=1e-6)


def _assert_error(fn, *fragments):
    with pytest.raises(InferenceServerException) as e:
        fn()
    msg = str(e.value).lower()
    assert any(f.lower() in msg for f in fragments), msg
    return msg


def test_malformed_requests_get_clear_errors_and_server_keeps_serving(served):
    client, url = served["client"], served["server"].url
    texts = served["essays"]["full_text"].tolist()[:2]

    def ok():
        res = client.infer("scorer", [_text_input(texts)])
        assert res.as_numpy("SCORE").shape == (2, 1)
        assert server_ready(url)

    ok()
    # wrong dtype: FP32 where TEXT (BYTES) is declared
    bad = tritonclient_http.InferInput("TEXT", [2, 1], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 1), np.float32))
    _assert_error(lambda: client.infer("scorer", [bad]), "data-type", "datatype", "dtype")
    ok()
    # wrong dtype on a member model: INT32 token ids
    ids = tritonclient_http.InferInput("input_ids", [1, 4], "INT32")
    ids.set_data_from_numpy(np.ones((1, 4), np.int32))
    mask = tritonclient_http.InferInput("attention_mask", [1, 4], "INT64")
    mask.set_data_from_numpy(np.ones((1, 4), np.int64))
    _assert_error(lambda: client.infer("tiny__mean__f0", [ids, mask]), "data-type", "datatype")
    ok()
    # wrong shape: [2, 2] texts where [batch, 1] is declared
    _assert_error(lambda: client.infer("scorer", [_text_input(texts * 2, (2, 2))]), "shape")
    ok()
    # wrong shape on a member: input_ids and attention_mask disagree (our model's own check)
    ids = tritonclient_http.InferInput("input_ids", [1, 4], "INT64")
    ids.set_data_from_numpy(np.ones((1, 4), np.int64))
    mask = tritonclient_http.InferInput("attention_mask", [1, 6], "INT64")
    mask.set_data_from_numpy(np.ones((1, 6), np.int64))
    _assert_error(lambda: client.infer("tiny__mean__f0", [ids, mask]), "differ in shape")
    ok()
    # empty batch
    empty = tritonclient_http.InferInput("TEXT", [0, 1], "BYTES")
    empty.set_data_from_numpy(np.zeros((0, 1), dtype=np.object_))
    msg = _assert_error(lambda: client.infer("scorer", [empty]), "empty batch", "got 0")
    assert "text" in msg
    ids = tritonclient_http.InferInput("input_ids", [0, 4], "INT64")
    ids.set_data_from_numpy(np.zeros((0, 4), np.int64))
    mask = tritonclient_http.InferInput("attention_mask", [0, 4], "INT64")
    mask.set_data_from_numpy(np.zeros((0, 4), np.int64))
    _assert_error(lambda: client.infer("tiny__mean__f0", [ids, mask]), "empty batch", "got 0",
                  "batch size")
    ok()
    # missing input, unknown model
    _assert_error(lambda: client.infer("scorer", []), "input", "expected")
    _assert_error(lambda: client.infer("no_such_model", [_text_input(texts)]), "unknown",
                  "not found", "no_such_model")
    ok()


def test_load_scorer_prefers_triton_and_falls_back(served):
    cfg = served["cfg"]
    remote = load_scorer(cfg, prefer_triton=True, triton_url=served["server"].url)
    assert isinstance(remote, TritonScorer)
    remote.close()
    local = load_scorer(cfg, prefer_triton=True, triton_url="127.0.0.1:1")
    assert isinstance(local, OnnxScorer)
    assert isinstance(load_scorer(cfg), OnnxScorer)


def test_a_running_server_of_another_bundle_is_not_used(served, tmp_path):
    """Same member names, another commit (a newer bundle): the running server's models may
    differ, so the scorer falls back to in-process rather than mix them."""
    import shutil

    from aes_core.serving.manifest import write_manifest

    newer_dir = tmp_path / "bundle_v2"
    shutil.copytree(served["bundle"].root, newer_dir)
    manifest = load_bundle(newer_dir).manifest
    write_manifest(newer_dir, manifest.model_copy(update={"created_at": "2099-01-01T00:00:00"}))
    newer = load_bundle(newer_dir)
    url = served["server"].url
    cfg = served["cfg"].model_copy(update={"serving": served["cfg"].serving.model_copy(
        update={"bundle_dir": str(newer_dir)})})
    assert isinstance(load_scorer(cfg, prefer_triton=True, triton_url=url), OnnxScorer)
    with open_scorer(newer, cfg.serving, triton_url=url) as choice:
        assert choice.via == IN_PROCESS
        assert f"serves bundle {served['bundle'].version()!r}" in choice.fallback_reason
        assert f"expected {newer.version()!r}" in choice.fallback_reason
    with open_scorer(served["bundle"], served["cfg"].serving, triton_url=url) as choice:
        assert choice.via == f"triton ({url}, model scorer)" and not choice.fallback_reason


def test_open_scorer_falls_back_when_the_repo_is_for_another_bundle(served, tmp_path):
    """A repository generated from an older bundle is never served for a newer one."""
    import shutil

    from aes_core.serving.manifest import write_manifest

    cfg, essays = served["cfg"], served["essays"].head(6)
    other = tmp_path / "bundle_v2"
    shutil.copytree(served["bundle"].root, other)
    manifest = load_bundle(other).manifest  # the same models, committed again later
    write_manifest(other, manifest.model_copy(update={"created_at": "2099-01-01T00:00:00"}))
    newer = load_bundle(other)
    repo = cfg.serving.triton_repo
    assert repo_bundle_version(repo) == served["bundle"].version() != newer.version()
    with open_scorer(newer, cfg.serving, start_server=True) as choice:
        assert choice.via == IN_PROCESS and isinstance(choice.scorer, OnnxScorer)
        assert "generated for another bundle" in choice.fallback_reason
        assert newer.version() in choice.fallback_reason and "triton_repo" in choice.fallback_reason
        scored = score_frame(choice.scorer, essays)
    # the fallback scores with the newer bundle's own folders
    folders = [m.folder for ms in choice.scorer.members.values() for m in ms]
    assert len(folders) == 4 and all(f.is_relative_to(other) for f in folders)
    ref = score_frame(OnnxScorer(served["ens"], served["members"], batch_size=8), essays)
    np.testing.assert_array_equal(scored.score, ref.score)
    # a folder that is no generated repository at all: also a reason, also in-process
    empty = cfg.serving.model_copy(update={"triton_repo": str(tmp_path / "no_repo")})
    with open_scorer(newer, empty, start_server=True) as choice:
        assert choice.via == IN_PROCESS
        assert "not a generated model repository" in choice.fallback_reason


def _processes_running(fragment: str) -> list[int]:
    """Live processes whose command line mentions ``fragment`` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and fragment in (d / "cmdline").read_bytes().decode(
                    errors="replace"):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def test_a_server_that_cannot_load_a_model_says_which_and_leaves_nothing_running(
        served, tmp_path):
    """The scorer model fails in initialize while the fold models load: the error names the
    model and its Python error, the log is kept, and no model process outlives the server
    (here Triton unloads the loaded models itself; on a GPU host one was still live when the
    server exited, so what is left of the process group is ended too)."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(served["cfg"].serving.triton_repo, repo)
    meta = next((repo / "scorer").glob("*/scorer.json"))
    meta.write_text("{ not json")
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0,
                          startup_timeout_s=120)
    with pytest.raises(TritonError) as err:
        server.start()
    msg = str(err.value)
    assert "exited with code" in msg and "models that did not load:" in msg
    assert re.search(r"scorer: UNAVAILABLE: .*JSONDecodeError", msg), msg
    assert "(at " in msg  # the frame that raised
    kept = Path(re.search(r"log \((.+?)\), last lines", msg).group(1))
    assert kept.exists() and "UNAVAILABLE" in kept.read_text()
    kept.unlink()
    time.sleep(1.0)
    assert _processes_running(str(repo)) == []  # the fold models' stubs are gone too
    assert not server.running
