"""A chunked member (whole essays as windows) served by a real tritonserver: the same scores as
the in-process ONNX Runtime scorer, and clear errors for bad window weights."""

from __future__ import annotations

import numpy as np
import pytest

from aes_core.config import ServingSection
from aes_core.export.triton_repo import write_triton_repo
from aes_core.serving.base import score_frame
from aes_core.serving.onnx_scorer import OnnxScorer
from aes_core.serving.triton import TritonScorer, TritonServer, server_ready
from tests.serving_support import (
    checkpoint_for,
    commit_bundle,
    export_checkpoints,
    make_regressor,
    sample_essays,
    spread_ensemble_for,
)

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MEMBER, N_FOLDS = "tiny__lstm", 2  # the BiLSTM reads padding: any batching difference shows


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone):
    tmp = tmp_path_factory.mktemp("triton_chunked")
    ckpts = [checkpoint_for(make_regressor(tiny_backbone, tmp / f"reg{fold}", "lstm", seed=fold,
                                           chunked=True), "lstm", fold)
             for fold in range(N_FOLDS)]
    exports = export_checkpoints(tmp / "bundle", ckpts)
    essays = sample_essays(16)
    ens = spread_ensemble_for(exports, essays, N_FOLDS)
    bundle = commit_bundle(tmp / "bundle", ens, exports)
    serving = ServingSection(triton_repo=str(tmp / "repo"), instance_count=1, max_batch_size=8,
                             request_batch_size=8)
    write_triton_repo(serving.triton_repo, bundle, serving)
    server = TritonServer(serving.triton_repo, http_port=0, grpc_port=0, metrics_port=0)
    server.start()
    try:
        yield {"ens": ens, "members": bundle.member_dirs(), "essays": essays, "server": server,
               "client": server.client()}
    finally:
        server.stop()


def test_triton_scores_chunked_members_as_in_process(served):
    repo = served["server"].repo
    assert "max_batch_size: 0" in (repo / f"{MEMBER}__f0" / "config.pbtxt").read_text()
    local = score_frame(OnnxScorer(served["ens"], served["members"], batch_size=8),
                        served["essays"])
    remote = score_frame(TritonScorer(served["server"].url, served["ens"], batch_size=8,
                                      client=served["client"]), served["essays"])
    np.testing.assert_allclose(remote.member_preds, local.member_preds, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(remote.score, local.score)
    assert len(set(local.score.tolist())) >= 3


def _member_inputs(weights: np.ndarray | None, windows: int = 3):
    ids = np.full((windows, 8), 1000, dtype=np.int64)
    out = []
    for name, arr in (("input_ids", ids), ("attention_mask", np.ones_like(ids)),
                      ("window_weights", weights)):
        if arr is None:
            continue
        inp = tritonclient_http.InferInput(name, list(arr.shape),
                                           "FP32" if arr.dtype == np.float32 else "INT64")
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def test_bad_window_weights_get_clear_errors(served):
    client, url = served["client"], served["server"].url
    model = f"{MEMBER}__f0"
    good = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    res = client.infer(model, _member_inputs(good))
    assert res.as_numpy("logits").shape == (2,)
    cases = [(good * 2, "sum to 1"), (good[:, :2].copy(), "must be [essays, 3]"),
             (None, "window_weights")]
    for weights, fragment in cases:
        with pytest.raises(InferenceServerException) as e:
            client.infer(model, _member_inputs(weights))
        assert fragment in str(e.value), str(e.value)
        assert server_ready(url)
    np.testing.assert_array_equal(client.infer(model, _member_inputs(good)).as_numpy("logits"),
                                  res.as_numpy("logits"))
