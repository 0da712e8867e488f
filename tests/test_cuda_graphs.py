"""CUDA graphs for small requests (``aes_core.serving.cuda_graphs``), tested on CPU with the
code that runs on CUDA: which shapes are captured, how a request is padded into one, that the
replayed forward equals the eager forward on the padded batch (and, for heads that mask
padding, on the unpadded one), and that the scorer sends only small requests through them.
On a CUDA host the same checks run on real captured graphs.
"""

from __future__ import annotations

import numpy as np
import pytest

from aes_core.config import ServingSection
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.export.triton_repo import torch_options
from aes_core.models.tokens import collate
from aes_core.serving.cuda_graphs import GraphShapes
from aes_core.serving.loader import torch_scorer
from aes_core.serving.torch_scorer import TorchScorer, cuda_available
from tests.gpu_serving_support import build_tiny_bundle, one_torch_thread  # noqa: F401
from tests.serving_support import sample_essays

ATOL = 1e-5
DEVICES = ["cpu"] + (["cuda"] if cuda_available() else [])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_backbone):
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"), tiny_backbone,
                             ["mean", "lstm"], gbdt=False)


@pytest.fixture(scope="module")
def texts():
    """Essays cut to 9-40 words: shorter than the tiny models' 64 tokens, so requests are
    padded up to a captured length (full essays would all fill the 64 tokens)."""
    full = sample_essays(12)["full_text"].tolist()
    return [" ".join(t.split()[:9 + 3 * i]) for i, t in enumerate(full)]


def _scorer(bundle, device: str, **kw) -> TorchScorer:
    return TorchScorer(bundle.ensemble, bundle.member_dirs(), device=device, dtype="fp32", **kw)


def test_graph_shapes():
    s = GraphShapes(max_batch=6, bucket=32, max_length=100)
    assert s.batch_sizes() == [1, 2, 4, 6]
    assert s.lengths() == [32, 64, 96, 100]
    assert s.shape_for(1, 1) == (1, 32)
    assert s.shape_for(3, 70) == (4, 96)
    assert s.shape_for(6, 100) == (6, 100)
    assert s.shape_for(7, 10) is None and s.shape_for(1, 101) is None
    assert GraphShapes(4, 64, 128).batch_sizes() == [1, 2, 4]
    with pytest.raises(ValueError, match="positive"):
        GraphShapes(0, 32, 512)


@pytest.mark.parametrize("device", DEVICES)
def test_replay_equals_the_eager_forward_on_the_padded_batch(bundle, texts, device):
    """Every request size up to max_batch: the graphs' logits are the eager forward's on the
    batch padded to the captured shape; the mean head (it masks padding) also equals the
    unpadded forward, the BiLSTM head reads the padding and may move."""
    scorer = _scorer(bundle, device)
    scorer.capture_graphs(max_batch=4, bucket=16)
    assert scorer.graphed and not scorer.graph_error
    g = scorer.groups[0]
    assert len(g.graphs) == 3 * len(GraphShapes(4, 16, g.plan.max_length).lengths())
    eager = _scorer(bundle, device)
    eg = eager.groups[0]
    mean_rows = [k for k, m in enumerate(g.models)
                 if scorer.ensemble.members[m.column].endswith("mean")]
    lstm_moved = 0.0
    for n in (1, 2, 3, 4):
        windows = g.encoder.windows(texts[n:2 * n])
        batch = collate(windows, g.encoder.pad_id, False)
        b, length = g.graphs.shapes.shape_for(n, batch.input_ids.shape[1])
        assert length > batch.input_ids.shape[1]  # padded columns (the case to check)
        before = g.graphs.replays
        got = scorer._group_logits(g, batch).cpu().numpy()
        assert g.graphs.replays == before + 1 and got.shape == (len(g.models), n)
        padded = collate(windows + [windows[0]] * (b - n), g.encoder.pad_id, False,
                         multiple=length, cap=length)
        assert padded.input_ids.shape == (b, length)
        ref = eager._group_logits(eg, padded).cpu().numpy()[:, :n]
        np.testing.assert_allclose(got, ref, atol=ATOL)
        unpadded = eager._group_logits(eg, batch).cpu().numpy()
        np.testing.assert_allclose(got[mean_rows], unpadded[mean_rows], atol=1e-4)
        lstm_moved = max(lstm_moved, float(np.abs(np.delete(got, mean_rows, 0)
                                                  - np.delete(unpadded, mean_rows, 0)).max()))
    assert lstm_moved > 1e-4  # the padding reaches the BiLSTM head: not a silent no-op


@pytest.mark.parametrize("device", DEVICES)
def test_only_small_requests_replay(bundle, texts, device):
    scorer = _scorer(bundle, device)
    scorer.capture_graphs(max_batch=2, bucket=32)
    eager = _scorer(bundle, device)
    g = scorer.groups[0]
    one = scorer.predict_request(texts[:1])
    assert g.graphs.replays == 1
    many = scorer.predict_request(texts[:5])  # over max_batch: the eager path
    assert g.graphs.replays == 1
    np.testing.assert_allclose(many, eager.predict_request(texts[:5]), atol=ATOL)
    assert one.shape == (1, 2) and np.isfinite(one).all()
    assert scorer.description.endswith("graphs")


@pytest.mark.parametrize("device", DEVICES)
def test_model_streams_give_the_same_scores(bundle, device):
    """Fold models on several CUDA streams (requests without graphs) score what one stream
    does; on a CPU there are no streams."""
    full = sample_essays(10)["full_text"].tolist()
    one = _scorer(bundle, device)
    three = _scorer(bundle, device, model_streams=3)
    assert len(three.model_streams) == (3 if device == "cuda" else 0)
    np.testing.assert_allclose(three.predict_request(full), one.predict_request(full),
                               atol=ATOL)


def test_graphs_are_captured_on_cuda_only(bundle):
    """``cuda_graphs`` asks for capture on a CUDA device; a CPU scorer stays eager."""
    scorer = _scorer(bundle, "cpu", cuda_graphs=4)
    assert not scorer.graphed and scorer.description == "torch cpu fp32"


def test_chunked_groups_stay_eager(tmp_path, tiny_backbone, texts):
    b = build_tiny_bundle(tmp_path, tiny_backbone, ["mean"], gbdt=False,
                          chunked_heads=("mean",))
    scorer = TorchScorer(b.ensemble, b.member_dirs(), device="cpu", dtype="fp32")
    scorer.capture_graphs(max_batch=2, bucket=32)
    assert [g.plan.chunking for g in scorer.groups] == [True]
    assert not scorer.graphed


def test_a_failed_capture_leaves_the_scorer_eager(bundle, texts, monkeypatch):
    import aes_core.serving.torch_scorer as ts

    def broken(*a, **k):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(ts, "GroupGraphs", broken)
    scorer = _scorer(bundle, "cpu")
    scorer.capture_graphs(max_batch=2, bucket=32)
    assert not scorer.graphed
    assert scorer.graph_error == "RuntimeError: operation not permitted when stream is capturing"
    np.testing.assert_allclose(scorer.predict_request(texts[:1]),
                               _scorer(bundle, "cpu").predict_request(texts[:1]), atol=ATOL)


def test_a_failed_capture_keeps_the_other_backbones_graphs(tmp_path, tiny_backbone, texts,
                                                         monkeypatch):
    """Two groups (the BiLSTM members read 48 tokens, the mean members 64); the second
    group's capture fails: it scores eagerly, the first keeps its graphs."""
    import json

    import aes_core.serving.torch_scorer as ts
    from aes_core.models.spec import SPEC_FILE

    b = build_tiny_bundle(tmp_path, tiny_backbone, ["mean", "lstm"], gbdt=False)
    for folder in b.member_dirs()["tiny__lstm"]:
        spec = json.loads((folder / SPEC_FILE).read_text())
        (folder / SPEC_FILE).write_text(json.dumps({**spec, "max_length": 48}))
    real, calls = ts.GroupGraphs, []

    def second_fails(*a, **k):
        calls.append(a)
        if len(calls) == 2:
            raise RuntimeError("capturing stream has unjoined work")
        return real(*a, **k)

    monkeypatch.setattr(ts, "GroupGraphs", second_fails)
    scorer = _scorer(b, "cpu")
    scorer.capture_graphs(max_batch=2, bucket=16)
    assert [g.plan.max_length for g in scorer.groups] == [64, 48]
    assert [g.graphs is not None for g in scorer.groups] == [True, False]
    assert scorer.graphed and scorer.description == "torch cpu fp32 graphs"
    assert scorer.graph_error == ("tiny (2 fold models): RuntimeError: capturing stream has "
                                  "unjoined work")
    np.testing.assert_allclose(scorer.predict_request(texts[:2]),
                               _scorer(b, "cpu").predict_request(texts[:2]), atol=ATOL)


def test_serving_options_reach_the_scorers(bundle):
    serving = ServingSection(backend="torch_gpu", cuda_graphs=4, cuda_graph_bucket=64,
                             cuda_graph_streams=2, model_streams=3)
    opts = torch_options(serving)
    assert (opts["cuda_graphs"], opts["graph_bucket"], opts["graph_streams"],
            opts["model_streams"]) == (4, 64, 2, 3)
    scorer = torch_scorer(bundle, serving, device="cpu")
    assert isinstance(scorer, TorchScorer) and not scorer.graphed  # CPU: never captured
    with pytest.raises(ValueError):
        ServingSection(cuda_graph_bucket=0)


def test_ensemble_with_graphs_blends_like_eager(bundle, texts):
    """The blended score of one essay through graphs stays close to eager's (the mean head is
    equal, the BiLSTM head reads up to bucket-1 padded tokens)."""
    ens: EnsembleArtifact = bundle.ensemble
    scorer = _scorer(bundle, "cpu")
    scorer.capture_graphs(max_batch=1, bucket=8)
    eager = _scorer(bundle, "cpu")
    a = np.vstack([scorer.predict_request([t]) for t in texts])
    b = np.vstack([eager.predict_request([t]) for t in texts])
    assert np.abs(ens.blend(a) - ens.blend(b)).max() < 0.05


def test_a_failed_capture_names_the_error_that_broke_it(bundle, monkeypatch):
    """The capture's end raises while the forward's error is handled: both are named."""
    import aes_core.serving.torch_scorer as ts

    def broken(*a, **k):
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("capturing stream has unjoined work")  # noqa: B904 - as a capture ends

    monkeypatch.setattr(ts, "GroupGraphs", broken)
    scorer = _scorer(bundle, "cpu")
    scorer.capture_graphs(max_batch=2, bucket=32)
    assert scorer.graph_error == (
        "RuntimeError: capturing stream has unjoined work (raised while handling "
        "RuntimeError: operation not permitted when stream is capturing)")

