"""The torch serving path, tested on CPU with the code that runs on CUDA.

Checks: the fast tokenizer path and the token cache give exactly ``tokenize_windows``' ids;
the in-process ``TorchScorer`` (fp32 on CPU) equals the ONNX scorer within 1e-4 on every head,
a chunked member and the GBDT member; the compiled path (captured with the eager backend)
equals eager; ``serving.backend`` picks the scorer; the generated torch repository (one
``scorer`` model, KIND_CPU here) answers through a real tritonserver with the in-process
scores; ``triton_python_paths`` go first on the models' sys.path.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from aes_core.config import ServingSection
from aes_core.export.triton_repo import repo_backend, write_triton_repo
from aes_core.models.tokens import TokenEncoder, TokenPlan, tokenize_windows
from aes_core.serving.base import score_frame
from aes_core.serving.loader import in_process_scorer, open_scorer, torch_scorer
from aes_core.serving.onnx_scorer import OnnxScorer
from aes_core.serving.token_cache import CachedEncoder, TokenCache
from aes_core.serving.torch_scorer import TorchScorer, resolve_backend
from tests.gpu_serving_support import (  # noqa: F401  (one_torch_thread: autouse)
    build_tiny_bundle,
    one_torch_thread,
    tokenizer_of,
)
from tests.serving_support import sample_essays

ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_backbone):
    """Every head, one chunked member, and the GBDT member; 2 folds."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"), tiny_backbone,
                             ["mean", "attention", "lstm", "weighted_layers"], gbdt=True,
                             chunked_heads=("attention",))


@pytest.fixture(scope="module")
def essays():
    df = sample_essays(40)
    long = "word " * 3000  # far over every limit: cut before tokenizing, identical ids
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "essay_id": "long", "full_text": long}
    return df


# what a BERT normalizer treats apart: accents and combining marks, Turkish dotted I, Greek
# final sigma, CJK, control characters, tabs, odd spaces, emoji, curly quotes, a special
# token's text, marks that survive accent stripping
HARD = ["Ünïcödé İstanbul. " * 200, "ΟΔΟΣ ΟΔΟΣ. Σίσυφος", "中文字符 and 日本語, mixed",
        "tab\there\x0bvt\x0cff\x00nul\x7fdel\u200bzw\u00a0nbsp\u2003em", "e\u0301 a\u0308",
        "emoji 😀🎉 “quoted” — dash… ’s", "a [MASK] and [CLS] inside", "[mask] lower",
        "क्षत्रिय हिन्दी", "ﬁne ligature Ⅻ ＡＢＣ", "x\u0345\u0315y", "x\u1b44\u0301\u0316y"]


def _texts(essays):
    return essays["full_text"].tolist() + ["", "  \n\n ", "a" * 3000,
                                           "para one\n\npara two\n" * 100] + HARD


@pytest.mark.parametrize("plan", [TokenPlan(32), TokenPlan(64, add_newline_tokens=True),
                                  TokenPlan(48, chunking=True, chunk_overlap=8, max_chunks=3),
                                  TokenPlan(48, tail_tokens=16)],
                         ids=["truncated", "newline_tokens", "chunked", "head_tail"])
@pytest.mark.parametrize("chars_per_token", [0.0, 8.0, 1.0])
def test_token_encoder_identical_to_tokenize_windows(bundle, essays, plan, chars_per_token):
    from aes_core.models.backbone import load_tokenizer

    tok = tokenizer_of(bundle)
    if plan.add_newline_tokens:
        tok = load_tokenizer(bundle.member_dirs()["tiny__mean"][0] / "backbone", True)
    texts = _texts(essays)
    enc = TokenEncoder(tok, plan, chars_per_token)
    assert enc.fast
    assert enc.windows(texts) == tokenize_windows(tok, texts, plan)


def test_pretruncation_falls_back_when_the_cut_is_short(bundle):
    """1 char per token cuts 64 chars of a text of long words: too few tokens, so the whole
    essay is tokenized again (same ids as without the cut)."""
    tok = tokenizer_of(bundle)
    text = "extraordinarily " * 200
    plan = TokenPlan(64)
    enc = TokenEncoder(tok, plan, chars_per_token=1.0)
    assert enc.windows([text]) == tokenize_windows(tok, [text], plan)
    assert len(enc.windows([text])[0][0]) == 64


def test_token_cache_memory_and_disk(bundle, essays, tmp_path):
    tok = tokenizer_of(bundle)
    plan = TokenPlan(48, chunking=True, chunk_overlap=8, max_chunks=3)
    texts = _texts(essays)
    ref = tokenize_windows(tok, texts, plan)
    cache = TokenCache(1000, tmp_path / "cache")
    enc = CachedEncoder(TokenEncoder(tok, plan, 8.0), cache)
    assert enc.windows(texts) == ref
    assert (cache.hits, cache.misses) == (0, len(texts))
    assert enc.windows(texts[::-1]) == ref[::-1]
    assert cache.hits == len(texts)
    cache.close()
    # a new process reads the disk cache: every essay a hit, ids unchanged
    again = TokenCache(1000, tmp_path / "cache")
    enc2 = CachedEncoder(TokenEncoder(tok, plan, 8.0), again)
    assert enc2.windows(texts) == ref and again.hits == len(texts)
    # another plan never reads these ids
    other = CachedEncoder(TokenEncoder(tok, TokenPlan(32), 8.0), again)
    assert other.windows(texts[:3]) == tokenize_windows(tok, texts[:3], TokenPlan(32))
    assert again.misses == 3
    again.close()


def test_token_cache_is_bounded(bundle, tmp_path):
    tok = tokenizer_of(bundle)
    cache = TokenCache(5, tmp_path / "c")
    enc = CachedEncoder(TokenEncoder(tok, TokenPlan(16)), cache)
    enc.windows([f"essay number {i}" for i in range(12)])
    assert len(cache) == 5
    n = cache._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
    assert n == 5
    cache.close()


def test_torch_scorer_fp32_equals_onnx(bundle, essays):
    onnx = OnnxScorer(bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir, batch_size=8)
    torch_ = TorchScorer(bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir, batch_size=8,
                         device="cpu", chars_per_token=8.0, token_cache=TokenCache(100))
    texts = essays["full_text"].tolist()
    a, b = onnx.predict_members(texts), torch_.predict_members(texts)
    assert a.shape == b.shape == (len(texts), 5)
    assert np.abs(a - b).max() < ATOL
    assert len(torch_.groups) == 2  # chunked attention reads essays differently: own group
    assert torch_.n_models == 8 and torch_.description == "torch cpu fp32"
    sa, sb = score_frame(onnx, essays), score_frame(torch_, essays)
    assert (sa.score == sb.score).all()
    assert len(set(sb.score.tolist())) >= 4


def test_large_requests_are_cut_into_length_sorted_batches(bundle, essays):
    """A request over gpu_batch_size runs as several padded batches: for heads that ignore
    padding, the scores equal one batch's."""
    members = {m: d for m, d in bundle.member_dirs().items() if m in ("tiny__mean",
                                                                       "tiny__weighted_layers")}
    from aes_core.ensemble.artifact import EnsembleArtifact

    ens = EnsembleArtifact(members=list(members), weights=[0.5, 0.5], n_folds=2)
    texts = essays["full_text"].tolist()[:20]
    whole = TorchScorer(ens, members, device="cpu", gpu_batch_size=64).predict_request(texts)
    cut = TorchScorer(ens, members, device="cpu", gpu_batch_size=3).predict_request(texts)
    assert np.abs(whole - cut).max() < ATOL


def test_parallel_tokenizer_threads_give_the_same_scores(bundle, essays, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # restored after the test
    monkeypatch.setenv("RAYON_NUM_THREADS", "1")
    members = {m: d for m, d in bundle.member_dirs().items() if m == "tiny__mean"}
    from aes_core.ensemble.artifact import EnsembleArtifact

    ens = EnsembleArtifact(members=list(members), weights=[1.0], n_folds=2)
    texts = essays["full_text"].tolist()
    one = TorchScorer(ens, members, device="cpu").predict_request(texts)
    two = TorchScorer(ens, members, device="cpu", tokenizer_threads=2).predict_request(texts)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["RAYON_NUM_THREADS"] == "2"
    np.testing.assert_array_equal(one, two)


def test_compiled_path_equals_eager(bundle, essays):
    """One compiled graph per architecture, weights passed in (functional_call): captured here
    with the eager backend (inductor needs minutes on 2 cores; CUDA compiles with it)."""
    members = {"tiny__mean": bundle.member_dirs()["tiny__mean"],
               "tiny__lstm": bundle.member_dirs()["tiny__lstm"]}
    from aes_core.ensemble.artifact import EnsembleArtifact

    ens = EnsembleArtifact(members=list(members), weights=[0.5, 0.5], n_folds=2)
    texts = essays["full_text"].tolist()[:12]
    eager = TorchScorer(ens, members, device="cpu").predict_members(texts)
    comp = TorchScorer(ens, members, device="cpu", compile=True, compile_backend="eager")
    assert comp.compiled, comp.compile_error
    assert np.abs(comp.predict_members(texts) - eager).max() < ATOL


def test_backend_choice(bundle):
    assert resolve_backend("auto") == "onnx_cpu"  # no CUDA on this machine
    assert resolve_backend("torch_gpu") == "torch_gpu"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tensorflow")
    assert isinstance(in_process_scorer(bundle, ServingSection()), OnnxScorer)
    torch_ = in_process_scorer(bundle, ServingSection(backend="torch_gpu"))
    assert isinstance(torch_, TorchScorer) and torch_.device.type == "cpu"
    torch_.close()
    small = in_process_scorer(bundle, ServingSection(backend="torch_gpu", tokenizer_word_cache=3))
    assert {g.encoder.encoder._words.max_words for g in small.groups} == {3}  # config reaches it
    small.close()
    with open_scorer(bundle, ServingSection(backend="torch_gpu", use_triton=False)) as choice:
        assert choice.via == "torch cpu fp32 (in-process)"
    with pytest.raises(Exception, match="no distilled student"):
        in_process_scorer(bundle, ServingSection(scorer="student"))


def test_triton_python_paths_go_first(tmp_path, monkeypatch):
    (tmp_path / "python_paths.txt").write_text("/first/listed\n/second/listed\n")
    monkeypatch.setenv("AES_TRITON_PYTHONPATH", f"/env/numpy1{os.pathsep}/env/other")
    monkeypatch.setenv("AES_PYTHONPATH", "/project")
    saved = list(sys.path)
    try:
        # what every generated model.py imports first (a copy lies beside it)
        from aes_core.export.triton_models.aes_paths import extend_path

        sys.path.append("/first/listed")  # already present: still moved to the front
        extend_path(str(tmp_path))
        assert sys.path[:5] == ["/env/numpy1", "/env/other", "/first/listed",
                                "/second/listed", "/project"]
        assert sys.path.count("/first/listed") == 1
    finally:
        sys.path[:] = saved


@pytest.fixture(scope="module")
def torch_served(tmp_path_factory, bundle):
    from aes_core.serving.triton import TritonServer

    pytest.importorskip("tritonclient.http")
    tmp = tmp_path_factory.mktemp("torch_repo")
    serving = ServingSection(backend="torch_gpu", triton_repo=str(tmp / "repo"),
                             max_batch_size=16, request_batch_size=8, gpu_batch_size=16,
                             torch_threads=1, gbdt_workers=1,
                             triton_python_paths=[str(tmp / "first")])
    written = write_triton_repo(serving.triton_repo, bundle, serving)
    server = TritonServer(serving.triton_repo, http_port=0, grpc_port=0, metrics_port=0,
                          startup_timeout_s=180)
    server.start()
    try:
        yield {"serving": serving, "written": written, "server": server}
    finally:
        server.stop()


def test_torch_repo_layout(torch_served, bundle):
    repo, written = torch_served["server"].repo, torch_served["written"]
    assert written.serving_backend == "torch_gpu" and written.instance_kind == "KIND_CPU"
    assert written.model_names() == ["scorer"]
    assert written.backend == "torch_gpu (python backend, torch on CPU, no CUDA)"
    assert repo_backend(repo) == "torch_gpu"
    cfg = (repo / "scorer" / "config.pbtxt").read_text()
    assert "instance_group [ { count: 1 kind: KIND_CPU } ]" in cfg
    assert "dynamic_batching" in cfg and 'string_value: "torch_gpu"' in cfg
    meta = json.loads((repo / "scorer" / "1" / "scorer.json").read_text())
    assert meta["backend"] == "torch_gpu" and meta["torch"]["gpu_batch_size"] == 16
    assert meta["torch"]["cudnn_attention"] is False  # serving.cudnn_attention's default
    assert (meta["torch"]["cuda_graphs"], meta["torch"]["graph_bucket"]) == (0, 32)  # off
    assert meta["members"]["tiny__lstm"]["folds"] == ["members/tiny__lstm/f0",
                                                      "members/tiny__lstm/f1"]
    f0 = repo / "scorer" / "1" / "members" / "tiny__lstm" / "f0"
    assert (f0 / "model.safetensors").exists() and not (f0 / "model.onnx").exists()
    paths = (repo / "scorer" / "1" / "python_paths.txt").read_text().splitlines()
    assert paths[0] == torch_served["serving"].triton_python_paths[0]
    assert not (repo / "tiny__mean__f0").exists()  # no per-fold models: one process


def test_torch_triton_equals_in_process(torch_served, bundle, essays):
    serving = torch_served["serving"]
    with open_scorer(bundle, serving, triton_url=torch_served["server"].url) as choice:
        assert choice.via.startswith("triton") and choice.scorer.backend == "torch_gpu"
        served = score_frame(choice.scorer, essays)
    local = torch_scorer(bundle, serving)
    ref = score_frame(local, essays)
    local.close()
    onnx = score_frame(OnnxScorer(bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir,
                                  batch_size=serving.request_batch_size), essays)
    assert np.abs(served.member_preds - ref.member_preds).max() < ATOL
    assert np.abs(served.member_preds - onnx.member_preds).max() < ATOL
    assert (served.score == onnx.score).all()


def test_torch_triton_publishes_stage_metrics(torch_served, bundle, essays):
    """The scorer's time per stage reaches the server's metrics port: after 3 requests the
    counters grew by 3 requests and their essays, with time in every stage it ran."""
    from aes_core.serving.stage_clock import scrape, stage_breakdown
    from aes_core.serving.triton import TritonScorer

    server = torch_served["server"]
    texts = essays["full_text"].tolist()[:20]
    before = scrape(server.metrics_url)
    client = TritonScorer(server.url, bundle.ensemble, batch_size=8)
    client.predict_members(texts)  # 8 + 8 + 4 essays
    client.close()
    got = stage_breakdown(before, scrape(server.metrics_url), "scorer")
    assert got["requests"] == 3 and got["essays"] == 20
    for stage in ("tokenize", "device", "gbdt_wait", "blend"):
        assert got[f"{stage}_ms_per_request"] > 0, got
    # Triton's own counters for the same requests: time in the model covers our stages
    ours = sum(got[f"{s}_ms_per_request"] for s in ("tokenize", "device", "blend"))
    assert got["triton_compute_infer_ms_per_request"] >= 0.9 * ours


def test_in_process_choice_reports_its_stage_seconds(bundle, essays):
    """Scoring in process (no Triton), the choice reports the torch scorer's seconds per stage
    for what it scored since it was asked last, and reads no server counters."""
    serving = ServingSection(backend="torch_gpu", use_triton=False, torch_threads=1,
                             gbdt_workers=0)
    with open_scorer(bundle, serving) as choice:
        assert choice.metrics_url is None and choice.metrics() == {}
        score_frame(choice.scorer, essays.head(6))
        got = choice.stages_since({})
        assert got["tokenize_s"] > 0 and got["device_s"] > 0 and got["gbdt_wait_s"] > 0
        assert choice.stages_since({}) == {}  # nothing scored since


def test_torch_triton_merges_concurrent_requests(tmp_path, bundle, essays):
    """serving.merge_requests with max_batch_size above the request size: Triton hands an
    instance several queued requests, the scorer runs them as one length-sorted set, and each
    client still gets its own essays' scores, equal to the in-process ones."""
    from concurrent.futures import ThreadPoolExecutor

    from aes_core.serving.stage_clock import scrape
    from aes_core.serving.triton import TritonScorer, TritonServer

    pytest.importorskip("tritonclient.http")
    serving = ServingSection(backend="torch_gpu", triton_repo=str(tmp_path / "repo"),
                             max_batch_size=32, request_batch_size=4, gpu_batch_size=8,
                             merge_requests=True, max_queue_delay_us=300_000,
                             torch_threads=1, gbdt_workers=0)
    write_triton_repo(serving.triton_repo, bundle, serving)
    texts = essays["full_text"].tolist()[:32]
    chunks = [texts[i:i + 4] for i in range(0, len(texts), 4)]

    def score(chunk):
        client = TritonScorer(server.url, bundle.ensemble, batch_size=4)
        try:
            return client.predict_members(chunk)
        finally:
            client.close()

    with TritonServer(serving.triton_repo, http_port=0, grpc_port=0, metrics_port=0,
                      startup_timeout_s=180) as server:
        before = scrape(server.metrics_url)
        with ThreadPoolExecutor(len(chunks)) as pool:
            served = np.vstack(list(pool.map(score, chunks)))
        after = scrape(server.metrics_url)

    def delta(name):
        return sum(v for (n, ls), v in after.items() if n == name and ("model", "scorer") in ls) \
            - sum(v for (n, ls), v in before.items() if n == name and ("model", "scorer") in ls)

    assert delta("nv_inference_request_success") == len(chunks)
    assert delta("nv_inference_exec_count") < len(chunks)  # some requests ran together
    local = torch_scorer(bundle, serving)
    ref = local.predict_members(texts)
    local.close()
    np.testing.assert_allclose(served, ref, atol=1e-4)


def test_torch_triton_errors_are_per_request(torch_served):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = torch_served["server"].client()
    arr = np.array([b"\xff\xfe not utf-8"], dtype=np.object_).reshape(-1, 1)
    inp = httpclient.InferInput("TEXT", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    with pytest.raises(InferenceServerException, match="TEXT row 0 is not valid UTF-8"):
        client.infer("scorer", [inp])
    ok = np.array([b"A short essay about cars."], dtype=np.object_).reshape(-1, 1)
    inp = httpclient.InferInput("TEXT", list(ok.shape), "BYTES")
    inp.set_data_from_numpy(ok)
    res = client.infer("scorer", [inp])
    assert 1 <= int(res.as_numpy("SCORE")[0, 0]) <= 6


def test_single_latency_stops_at_its_time_budget(torch_served, essays):
    from aes_core.serving.loadgen import single_latency

    url, texts = torch_served["server"].url, essays["full_text"].tolist()
    capped = single_latency(url, "scorer", texts, requests=500, max_seconds=0.0,
                            min_requests=4)
    assert capped.requests == capped.essays == 4 and not capped.errors
    full = single_latency(url, "scorer", texts, requests=6, max_seconds=None)
    assert full.requests == 6 and full.p99_ms >= full.p50_ms > 0


def test_worker_processes_give_the_same_scores(bundle, essays):
    """Tokenizer processes run ahead of the model; GBDT processes score beside it (the
    essays split among them)."""
    texts = essays["full_text"].tolist()[:24]
    plain = TorchScorer(bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir, batch_size=8,
                        device="cpu", chars_per_token=8.0)
    piped = TorchScorer(bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir, batch_size=8,
                        device="cpu", chars_per_token=8.0, tokenizer_workers=1,
                        gbdt_workers=2)
    try:
        ref = plain.predict_members(texts)
        assert np.abs(piped.predict_members(texts) - ref).max() < 1e-6
        assert np.abs(piped.predict_request(texts[:5]) - plain.predict_request(texts[:5])
                      ).max() < 1e-6
    finally:
        piped.close()


def test_torch_models_need_no_scipy_and_a_broken_one_is_named(monkeypatch):
    """Triton's stub needs numpy 1.x first on the path, where a host's numpy-2 scipy breaks:
    the student and the fold models import no scipy; the scorer says what to put there."""
    import subprocess
    from pathlib import Path

    code = ("import sys, aes_core.ensemble.artifact, aes_core.serving.torch_scorer, "
            "aes_core.serving.token_cache; print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
    saved = list(sys.path)
    try:
        from aes_core.export.triton_models import aes_paths
    finally:
        sys.path[:] = saved
    aes_paths.require_scipy()  # this environment's scipy imports
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    with pytest.raises(RuntimeError, match=r"scipy cannot be imported with numpy .*Put a "
                                           r"scipy built for numpy \d\.x in the same folder"):
        aes_paths.require_scipy()


def test_torch_triton_blends_with_a_stacker(tmp_path, tiny_backbone, essays):
    """The shipped GPU profile blends with a stacker, which reads the essay texts: the torch
    Triton model passes them, and its scores equal the in-process ones."""
    from aes_core.serving.triton import TritonServer
    from tests.gpu_serving_support import build_tiny_bundle, serving_benchmark

    pytest.importorskip("tritonclient.http")
    stacked = build_tiny_bundle(tmp_path / "bundle", tiny_backbone, ["mean"], gbdt=True,
                                stacker=True)
    assert stacked.ensemble.method == "stacker"
    serving = ServingSection(backend="torch_gpu", triton_repo=str(tmp_path / "repo"),
                             max_batch_size=16, request_batch_size=8, torch_threads=1,
                             gbdt_workers=1)
    write_triton_repo(serving.triton_repo, stacked, serving)
    with TritonServer(serving.triton_repo, http_port=0, grpc_port=0, metrics_port=0,
                      startup_timeout_s=180) as server:
        with open_scorer(stacked, serving, triton_url=server.url) as choice:
            assert choice.via.startswith("triton")
            served = score_frame(choice.scorer, essays)
        texts = essays["full_text"].astype(str).tolist()
        bench = serving_benchmark().served_scores(server.url, "scorer", stacked.ensemble,
                                                  texts, 8)
    local = torch_scorer(stacked, serving)
    ref = score_frame(local, essays)
    local.close()
    np.testing.assert_allclose(served.blended, ref.blended, atol=1e-6)
    assert (served.score == ref.score).all()
    # the serving benchmark's own client and fp32 reference blend with the texts too
    np.testing.assert_allclose(bench["blended"], ref.blended, atol=1e-6)
    reference = serving_benchmark().reference_scores(stacked, serving, texts, student=False)
    np.testing.assert_allclose(reference["blended"], ref.blended, atol=1e-6)


def test_cudnn_attention_switch():
    """serving.cudnn_attention decides whether SDPA may use cuDNN's kernel in the process."""
    import torch

    from aes_core.models.backbone import use_cudnn_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        use_cudnn_attention(False)
        assert torch.backends.cuda.cudnn_sdp_enabled() is False
        use_cudnn_attention(True)
        assert torch.backends.cuda.cudnn_sdp_enabled() is True
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_a_cudnn_torch_cannot_use_is_turned_off(monkeypatch):
    """Inside tritonserver an older cuDNN can be loaded first; torch refuses it (LSTM heads
    fail): the scorer turns cuDNN off instead of failing to load."""
    import torch

    from aes_core.serving.torch_scorer import usable_cudnn

    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)
    assert usable_cudnn() is True and torch.backends.cudnn.enabled  # version() answers

    def mismatch():
        raise RuntimeError("cuDNN version incompatibility: PyTorch was compiled against "
                           "(9, 19, 0) but found runtime version (9, 14, 0). More text")

    monkeypatch.setattr(torch.backends.cudnn, "version", mismatch)
    assert usable_cudnn() is False
    assert torch.backends.cudnn.enabled is False


def test_torch_cuda_libraries_come_first_on_the_server_library_path(tmp_path, monkeypatch):
    """torch inside tritonserver loads the cuDNN it was built against, not an older copy of
    the same soname found first on the system's or the server's library path."""
    import sysconfig

    from aes_core.serving.triton import package_cuda_libdirs, server_env

    pytest.importorskip("pytriton")
    lib = tmp_path / "nvidia" / "cudnn" / "lib"
    lib.mkdir(parents=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)
    assert str(lib) in package_cuda_libdirs()
    order = server_env()["LD_LIBRARY_PATH"].split(":")
    assert order.index(str(lib)) < order.index(sysconfig.get_config_var("LIBDIR"))
    assert order.index(str(lib)) < next(i for i, p in enumerate(order)
                                         if p.endswith("nvidia_pytriton.libs"))


def test_a_bert_normalizer_runs_as_a_character_table(bundle):
    """The table maps what the normalizer maps; texts it cannot map character by character go
    through the full tokenizer (the identity test above checks the ids of both)."""
    enc = TokenEncoder(tokenizer_of(bundle), TokenPlan(64))
    chars = enc._chars
    assert chars is not None
    assert chars.apply("Ünïcödé\tΣ 中") == "unicode σ  中 "
    assert chars.apply("a [MASK] inside") is None  # an added token's text
    assert chars.apply("e\u0301\u0345") == "e"  # marks the normalizer strips
    assert chars.apply("x\u1b44\u0301y") is None  # a combining mark it keeps (Mc, class 9)
    assert TokenEncoder(tokenizer_of(bundle), TokenPlan(64, add_newline_tokens=True))._chars is None
