"""Serving on the GPU, a user's view: Triton scores the whole ensemble, the student, and the
CPU ONNX baseline, measured from separate client processes.

Given a serving bundle (``--bundle``; it is hard-linked into ``--work`` and never changed) or
a synthetic one (``--synthetic-backbone``: every fold x head regressor built on that backbone
with an untrained head and a real GBDT member — the speed of a real bundle, meaningless QWK):

(a) writes the ``torch_gpu`` Triton repository, starts the real ``tritonserver`` and
    measures with ``tritonclient`` from ``--clients`` processes: essays/s for the whole
    ensemble, text -> score, ``--request-batch`` essays per request, on a load of distinct
    essays (``--data``, ``--train``, ``--extra-texts``) with the servers' token cache off
    (``--token-cache 0``), so that every essay is tokenized as a new one would be; p50/p99
    latency of one essay alone (one client, one request after another); and where a
    request's time went (tokenize / device / GBDT wait / blend, from the scorer's counters on
    the server's metrics port, beside Triton's queue and compute time: ``stages``);
(b) the same for the ``student`` model (distilled here with ``--student-backbone`` when the
    bundle has none);
(c) the CPU baseline: the ``onnx_cpu`` repository (ONNX Runtime members + BLS scorer) on
    ``--cpu-essays`` essays;
(d) agreement of the served scores (bf16 on CUDA) with an fp32 reference scored in process:
    max |blended difference| and the fraction of changed 1..6 scores;
(e) QWK on the labelled essays (``--labels``) of the ensemble and of the student.

It also measures the tokenizer paths of the served code (HF call, the fast backend call,
with the pre-truncation cut, cache hits). Writes ``serving_gpu.json`` and ``serving_gpu.png``
to ``--out`` and prints the hardware with the numbers.

On the GPU host (repo as CWD; ``NUMPY1`` holds numpy 1.26.4 for the Triton Python models)::

    python benchmarks/serving_gpu.py --synthetic-backbone MINILM --folds 5 \\
        --heads mean,attention,lstm,weighted_layers --max-length 512 \\
        --data DATA/aes2/test.csv.gz --labels DATA/aes2/test_score.csv.gz \\
        --train DATA/aes2/train.csv.gz --student-backbone MINILM \\
        --triton-python-paths NUMPY1 --out benchmarks/results

or ``--bundle var/storage/serving`` for a trained bundle. ``gpu-full``'s serving settings
add ``--instances 2 --student-instances 4 --tokenizer-threads 4 --max-batch 256
--merge-requests --gpu-batch 256 --cuda-graphs 4 --graph-streams 4`` (compiled unless
``--no-compile``). ``--build-only`` builds the synthetic bundle (and its student) in
``--work`` and stops; later runs measure it with ``--bundle WORK/bundle``. CPU smoke run (tiny
models)::

    python benchmarks/serving_gpu.py --tiny --out /tmp/serving_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tokenizer_speed
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.config import SAMPLE_DIR, AesConfig, GbdtSection, ServingSection  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.members import GBDT_MEMBER, member_name  # noqa: E402
from aes_core.metrics import qwk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "aes2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_argument_group("what to serve")
    src.add_argument("--bundle", help="a serving bundle folder (manifest.json)")
    src.add_argument("--synthetic-backbone", help="build a bundle on this HF backbone folder")
    src.add_argument("--tiny", action="store_true", help="tiny random BERT (CPU smoke run)")
    src.add_argument("--folds", type=int, default=5)
    src.add_argument("--heads", default="mean,attention,lstm,weighted_layers")
    src.add_argument("--max-length", type=int, default=512)
    src.add_argument("--no-gbdt", action="store_true", help="synthetic bundle without GBDT")
    src.add_argument("--gbdt-train-essays", type=int, default=1500)
    src.add_argument("--student-backbone", help="distill a student on this backbone when the "
                     "bundle has none")
    src.add_argument("--no-student", action="store_true", help="measure no student")
    src.add_argument("--student-epochs", type=int, default=1)
    src.add_argument("--student-max-length", type=int, default=None)
    src.add_argument("--student-essays", type=int, default=4000)
    data = ap.add_argument_group("data")
    data.add_argument("--data", help="essays to score (essay_id, full_text)")
    data.add_argument("--labels", help="essay_id, score: QWK of ensemble and student")
    data.add_argument("--train", help="scored essays: GBDT and student training")
    data.add_argument("--extra-texts", action="append", default=[],
                      help="more essays (a CSV with full_text) for the throughput load, which "
                      "draws distinct essays from --data, --train and these before it repeats")
    data.add_argument("--n-essays", type=int, default=8192, help="essays in a throughput run")
    data.add_argument("--student-n-essays", type=int, default=None,
                      help="essays in the student's throughput run (default: --n-essays)")
    data.add_argument("--single-requests", type=int, default=200)
    data.add_argument("--single-seconds", type=float, default=30.0,
                      help="stop the one-essay requests after this long (at least 10 run)")
    data.add_argument("--cpu-essays", type=int, default=128)
    serve = ap.add_argument_group("serving")
    serve.add_argument("--clients", type=int, default=8)
    serve.add_argument("--request-batch", type=int, default=64)
    serve.add_argument("--max-batch", type=int, default=None,
                       help="Triton max_batch_size (default: --request-batch; larger lets the "
                       "dynamic batcher hand an instance several requests, see --merge-requests)")
    serve.add_argument("--instances", type=int, default=2, help="Triton instances per GPU")
    serve.add_argument("--student-instances", type=int, default=None,
                       help="Triton instances of the student (default: --instances)")
    serve.add_argument("--tokenizer-threads", type=int, default=8,
                       help="Rust tokenizer threads per scorer instance")
    serve.add_argument("--gpu-batch", type=int, default=128)
    serve.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    serve.add_argument("--no-compile", action="store_true")
    serve.add_argument("--gbdt-workers", type=int, default=4)
    serve.add_argument("--merge-requests", action="store_true")
    serve.add_argument("--cuda-graphs", type=int, default=0,
                       help="requests of at most this many essays replay CUDA graphs")
    serve.add_argument("--graph-bucket", type=int, default=32)
    serve.add_argument("--graph-streams", type=int, default=1)
    serve.add_argument("--queue-delay-us", type=int, default=2000)
    serve.add_argument("--token-cache", type=int, default=0,
                       help="essays each served model keeps token ids of (0 = none: every "
                       "request is tokenized, as for essays never seen before)")
    serve.add_argument("--cpu-instances", type=int, default=1)
    serve.add_argument("--triton-python-paths", default=os.environ.get("AES_TRITON_PYTHONPATH",
                                                                       ""),
                       help=f"folders first on the models' sys.path ({os.pathsep}-separated)")
    serve.add_argument("--startup-timeout", type=float, default=1800.0)
    serve.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--build-only", action="store_true",
                    help="build the bundle (and student) in --work, then stop")
    ap.add_argument("--work", default=None, help="scratch folder (default: under --out)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    if sum(bool(x) for x in (a.bundle, a.synthetic_backbone, a.tiny)) != 1:
        ap.error("give exactly one of --bundle, --synthetic-backbone, --tiny")
    return a


# ---------------------------------------------------------------- data and bundles

def _read(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    if "full_text" not in df.columns and "score" not in df.columns:
        raise SystemExit(f"{path}: expected essay_id + full_text or score columns")
    return df


def load_pool(first: list[str], *more: list[str]) -> list[str]:
    """Distinct essays for a throughput load: ``first`` in order, then the others' new ones."""
    seen, pool = set(), []
    for t in (t for texts in (first, *more) for t in texts):
        if t not in seen:
            seen.add(t)
            pool.append(t)
    return pool


def repeated(texts: list[str], n: int) -> list[str]:
    """The first ``n`` essays of ``texts`` repeated end to end (a throughput run's load)."""
    return (texts * -(-n // len(texts)))[:n]


def load_data(a) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame]:
    """(essays to score, labels or None, scored training essays)."""
    if a.tiny:
        test, labels = SAMPLE_DIR / "test.csv.gz", SAMPLE_DIR / "test_score.csv.gz"
        train = SAMPLE_DIR / "train.csv.gz"
    else:
        test = a.data or (SHARED / "test.csv.gz")
        labels = a.labels or (SHARED / "test_score.csv.gz" if not a.data else None)
        train = a.train or (SHARED / "train.csv.gz")
    essays = _read(test)
    lab = _read(labels) if labels and Path(labels).exists() else None
    tr = _read(train) if Path(train).exists() else None
    return essays, lab, tr


def synthetic_bundle(a, root: Path, backbone: Path, train: pd.DataFrame,
                     probe_texts: list[str], log) -> Path:
    """Every fold x head regressor on ``backbone`` (untrained heads), ONNX exports, a real GBDT
    member, an equal-weight ensemble with thresholds at quantiles of its blended scores."""
    import torch

    from aes_core.ensemble.artifact import EnsembleArtifact
    from aes_core.ensemble.gbdt import fit_gbdt
    from aes_core.export.onnx import export_onnx
    from aes_core.models.backbone import load_tokenizer
    from aes_core.models.regressor import EssayRegressor, RegressorSpec
    from aes_core.serving.manifest import (
        ENSEMBLE_PATH,
        GBDT_DIR,
        MEMBERS_DIR,
        MemberEntry,
        ServingManifest,
        write_manifest,
    )
    from aes_core.serving.torch_scorer import TorchScorer

    heads = [h for h in a.heads.split(",") if h]
    bb_name = "tiny" if a.tiny else "minilm"
    tok = load_tokenizer(backbone)
    entries, dirs = [], {}
    for h, head in enumerate(heads):
        name = member_name(bb_name, head)
        folds = []
        for k in range(a.folds):
            torch.manual_seed(100 * k + h)
            spec = RegressorSpec(head=head, max_length=a.max_length, backbone_name=bb_name)
            model = EssayRegressor.from_backbone(backbone, spec)
            with torch.no_grad():  # spread the untrained head's outputs over the scale
                model.head.out.weight.mul_(3.0)
            rel = f"{MEMBERS_DIR}/{name}/fold{k}-synthetic"
            model.save_pretrained(root / rel, tok)
            if not a.skip_cpu:
                export_onnx(root / rel, root / rel)
            folds.append(rel)
        entries.append(MemberEntry(name=name, backbone=bb_name, head=head, folds=folds,
                                   spec=spec))
        dirs[name] = [root / f for f in folds]
        log(f"synthetic member {name}: {a.folds} folds")
    names = list(dirs)
    gbdt_rel = None
    if not a.no_gbdt:
        t0 = time.time()
        df = train.head(a.gbdt_train_essays).reset_index(drop=True)
        df["fold"] = np.arange(len(df)) % a.folds
        cfg = (GbdtSection(n_estimators=20, word_max_features=300, char_max_features=300,
                           early_stopping_holdout=0.0) if a.tiny
               else GbdtSection(n_estimators=800, early_stopping_holdout=0.0))
        fit_gbdt(df, cfg, progress=False).member.save(root / GBDT_DIR)
        gbdt_rel = GBDT_DIR
        names.append(GBDT_MEMBER)
        log(f"GBDT member trained on {len(df)} essays in {time.time() - t0:.0f}s")
    w = [1.0 / len(names)] * len(names)
    probe = EnsembleArtifact(members=names, weights=w, n_folds=a.folds)
    scorer = TorchScorer(probe, dirs, root / GBDT_DIR if gbdt_rel else None, dtype="fp32")
    blended = probe.blend(scorer.predict_members(probe_texts))
    scorer.close()
    cuts = np.maximum.accumulate(np.quantile(blended, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
                                 + np.arange(5) * 1e-6)
    ens = EnsembleArtifact(members=names, weights=w, thresholds=[float(c) for c in cuts],
                           n_folds=a.folds, notes="synthetic: untrained heads")
    (root / ENSEMBLE_PATH).parent.mkdir(parents=True, exist_ok=True)
    ens.save(root / ENSEMBLE_PATH)
    write_manifest(root, ServingManifest(members=entries, gbdt_dir=gbdt_rel,
                                         profile="synthetic"))
    return root


def distill_student(a, bundle_dir: Path, backbone: Path, train: pd.DataFrame, log) -> None:
    import torch

    from aes_core.student import StudentJob, distill

    cuda = torch.cuda.is_available()
    bb_name = "tiny" if a.tiny else "minilm"
    cfg = AesConfig.model_validate({
        "backbones": [{"name": bb_name, "path": str(backbone), "max_length": a.max_length}],
        "train": {"freeze_layers": 0, "freeze_embeddings": False},
        "serving": {"backend": "torch_gpu", "gbdt_workers": 0 if a.tiny else a.gbdt_workers,
                    "torch_compile": "off"},
        "student": {"epochs": a.student_epochs, "essays": "train",
                    "max_essays": a.student_essays, "max_length": a.student_max_length,
                    "batch_size": 8 if a.tiny else 32, "eval_batch_size": 16 if a.tiny else 128,
                    "lr": 1e-3 if a.tiny else 1e-4}})
    kwargs = ({"accelerator": "gpu", "devices": [0], "precision": "bf16-mixed"} if cuda
              else {"accelerator": "cpu", "devices": 1, "precision": "32-true"})
    job = StudentJob(cfg, backbone, bundle_dir, bundle_dir.parent / "student_work",
                     trainer_kwargs=kwargs, device="cuda:0" if cuda else "cpu",
                     amp_dtype=torch.bfloat16 if cuda else None, log_fn=log)
    entry = distill(job, train)
    log(f"student distilled: holdout RMSE {entry.holdout_rmse:.3f}, agreement QWK "
        f"{entry.holdout_agreement_qwk:.3f} in {entry.seconds:.0f}s")


# ---------------------------------------------------------------- measurements

def tokenizer_paths(bundle, texts: list[str]) -> dict[str, Any]:
    """essays/s of the tokenizer calls the served path can use (one process)."""
    from tokenizer_speed import best_rate, encoder_rates

    from aes_core.models.regressor import load_regressor_tokenizer
    from aes_core.models.tokens import TokenEncoder
    from aes_core.serving.token_cache import CachedEncoder, TokenCache

    first = bundle.member_dirs()[bundle.manifest.members[0].name][0]
    tok = load_regressor_tokenizer(first)
    spec = bundle.manifest.members[0].spec
    cpt = ServingSection().pretruncate_chars_per_token
    cached = CachedEncoder(TokenEncoder(tok, spec, cpt), TokenCache(len(texts) + 1))
    out = {"essays": len(texts), "max_length": spec.max_length, "chars_per_token": cpt,
           **encoder_rates(tok, spec, texts, cpt),
           "cache_miss_then_store": best_rate(cached.windows, texts)[0],
           "cache_hit": best_rate(cached.windows, texts)[0]}
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def gbdt_paths(bundle, texts: list[str]) -> dict[str, Any] | None:
    """ms per essay of the GBDT member (every fold model, each essay analyzed once)."""
    if bundle.gbdt_dir is None:
        return None
    from aes_core.ensemble.gbdt import GbdtMember

    member = GbdtMember.load(bundle.gbdt_dir)
    t0 = time.perf_counter()
    member.predict(texts)
    t1 = time.perf_counter()
    return {"essays": len(texts), "folds": len(member.folds),
            "member_predict_ms_per_essay": round((t1 - t0) / len(texts) * 1e3, 3)}


def served_scores(url: str, model: str, ensemble, texts: list[str], batch: int) -> dict:
    from aes_core.serving.triton import TritonScorer

    scorer = TritonScorer(url, ensemble, batch_size=batch, model=model)
    preds = scorer.predict_members(texts)
    scorer.close()
    blended = ensemble.blend(preds, texts)
    return {"members": preds, "blended": blended, "score": ensemble.to_scores(blended)}


def agreement(served: dict, ref: dict) -> dict[str, float]:
    return {"max_abs_blended_diff": float(np.abs(served["blended"] - ref["blended"]).max()),
            "max_abs_member_diff": float(np.abs(served["members"] - ref["members"]).max()),
            "rounded_scores_changed_fraction": float(np.mean(served["score"] != ref["score"]))}


def reference_scores(bundle, serving: ServingSection, texts: list[str], student: bool) -> dict:
    """fp32, eager, in process (on the GPU where there is one)."""
    from aes_core.serving.loader import torch_scorer

    scorer = torch_scorer(bundle, serving, student=student, dtype="fp32", compile=False)
    preds = scorer.predict_members(texts)
    scorer.close()
    ens = scorer.ensemble
    blended = ens.blend(preds, texts)
    return {"members": preds, "blended": blended, "score": ens.to_scores(blended)}


def labelled_qwk(ids: list[str], scores: np.ndarray, labels: pd.DataFrame | None) -> float | None:
    if labels is None:
        return None
    y = labels.assign(essay_id=labels["essay_id"].astype(str)).set_index("essay_id")["score"]
    truth = pd.Series(ids).map(y)
    keep = truth.notna().to_numpy()
    if keep.sum() < 2:
        return None
    return float(qwk(truth[keep].astype(int).to_numpy(), scores[keep]))


def serve_and_measure(a, bundle, serving: ServingSection, texts: list[str], unique: list[str],
                      log, on_model=None) -> dict[str, Any]:
    """(a), (b) and the served scores of the unique essays, on the torch_gpu repository.
    ``on_model(name, measured)`` is called as soon as a model's speed is measured."""
    from aes_core.export.triton_repo import write_triton_repo
    from aes_core.serving.loadgen import run_load, single_latency
    from aes_core.serving.stage_clock import scrape, stage_breakdown
    from aes_core.serving.triton import TritonServer

    written = write_triton_repo(serving.triton_repo, bundle, serving)
    out: dict[str, Any] = {"backend": written.backend, "instance_kind": written.instance_kind,
                           "models": written.model_names()}
    t0 = time.time()
    log_path = Path(serving.triton_repo).parent / "tritonserver_torch.log"
    with TritonServer(serving.triton_repo, http_port=0, grpc_port=0, metrics_port=0,
                      startup_timeout_s=a.startup_timeout, log_path=log_path) as server:
        out["server_start_s"] = round(time.time() - t0, 1)
        log(f"torch_gpu repository served in {out['server_start_s']}s ({written.backend})")
        models = [("scorer", bundle.ensemble)]
        if written.student:
            models.append(("student", bundle.student_ensemble()))
        for model, ens in models:
            r: dict[str, Any] = {}
            served_scores(server.url, model, ens, unique[:a.request_batch * 2], a.request_batch)
            m0 = scrape(server.metrics_url)
            n = (a.student_n_essays or len(texts)) if model == "student" else len(texts)
            load = run_load(server.url, model, repeated(texts, n), a.clients, a.request_batch)
            m1 = scrape(server.metrics_url)
            single = single_latency(server.url, model, unique, a.single_requests,
                                    max_seconds=a.single_seconds)
            m2 = scrape(server.metrics_url)
            r.update(essays_per_s=round(load.essays_per_s, 1), load=load.to_dict(),
                     p50_ms_single=round(single.p50_ms, 2), p99_ms_single=round(single.p99_ms, 2),
                     single=single.to_dict(),
                     # where a request's time goes, from the server's metrics port (the
                     # single-essay figures include single_latency's warm-up requests)
                     stages={"load": stage_breakdown(m0, m1, model),
                             "single": stage_breakdown(m1, m2, model)})
            if on_model is not None:
                on_model(model, r)
            r["scores"] = served_scores(server.url, model, ens, unique, a.request_batch)
            out[model] = r
            log(f"{model}: {load.essays_per_s:,.0f} essays/s ({a.clients} clients x "
                f"{a.request_batch} essays/request, p99 request {load.p99_ms:.0f} ms); one "
                f"essay p50 {single.p50_ms:.1f} ms, p99 {single.p99_ms:.1f} ms")
    return out


def cpu_baseline(a, bundle, work: Path, texts: list[str], log) -> dict[str, Any]:
    """(c): the onnx_cpu repository (ONNX Runtime members + BLS scorer) on the CPU."""
    from aes_core.export.triton_repo import write_triton_repo
    from aes_core.serving.loadgen import run_load
    from aes_core.serving.triton import TritonServer

    serving = ServingSection(backend="onnx_cpu", triton_repo=str(work / "repo_onnx"),
                             instance_count=a.cpu_instances,
                             max_batch_size=max(a.request_batch, 1),
                             request_batch_size=a.request_batch,
                             triton_python_paths=_paths(a))
    write_triton_repo(serving.triton_repo, bundle, serving)
    with TritonServer(serving.triton_repo, http_port=0, grpc_port=0, metrics_port=0,
                      startup_timeout_s=a.startup_timeout,
                      log_path=work / "tritonserver_onnx.log") as server:
        load = run_load(server.url, "scorer", texts, min(a.clients, 4), a.request_batch)
    log(f"CPU ONNX baseline: {load.essays_per_s:,.1f} essays/s on {load.essays} essays")
    return {"essays_per_s": round(load.essays_per_s, 2), "load": load.to_dict(),
            "instances": a.cpu_instances}


def _paths(a) -> list[str]:
    return [p for p in a.triton_python_paths.split(os.pathsep) if p]


# ---------------------------------------------------------------- report

def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aes_core.report import save_figure

    ens, st = report.get("triton_ensemble", {}), report.get("student", {})
    bars = [("ensemble\n(Triton, torch)", ens.get("essays_per_s")),
            ("student\n(Triton, torch)", st.get("essays_per_s")),
            ("ensemble\n(Triton, ONNX CPU)", report.get("cpu_onnx_baseline_essays_per_s"))]
    bars = [(n, v) for n, v in bars if v]
    lat = [(n, d.get("p50_ms_single"), d.get("p99_ms_single"))
           for n, d in (("ensemble", ens), ("student", st)) if d.get("p99_ms_single")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    ax.bar([n for n, _ in bars], [v for _, v in bars], color=["#2b6cb0", "#38a169", "#a0aec0"])
    ax.set_yscale("log")
    ax.set_ylabel("essays / s (text -> score, log scale)")
    for i, (_, v) in enumerate(bars):
        ax.text(i, v, f"{v:,.0f}" if v >= 10 else f"{v:.2g}", ha="center", va="bottom")
    ax.set_title(f"throughput, {ens.get('clients', '?')} clients x "
                 f"{ens.get('request_batch', '?')} essays/request")
    ax = axes[1]
    x = np.arange(len(lat))
    ax.bar(x - 0.2, [p for _, p, _ in lat], 0.4, label="p50")
    ax.bar(x + 0.2, [p for _, _, p in lat], 0.4, label="p99")
    ax.set_xticks(x, [n for n, _, _ in lat])
    ax.set_ylabel("ms, one essay per request")
    ax.set_title("latency of one essay alone")
    ax.legend()
    save_figure(fig, path, f"{report['gpu']} | {report['hardware'].get('cpu', '')}", dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    t_start = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else out / "serving_gpu_work"
    work.mkdir(parents=True, exist_ok=True)
    hw = hardware()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    log("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()))
    import torch

    from aes_core.serving.manifest import Bundle, link_or_copy_tree

    essays, labels, train = load_data(a)
    unique = essays["full_text"].astype(str).tolist()
    ids = essays["essay_id"].astype(str).tolist()
    if a.tiny:
        a.folds, a.heads, a.max_length = 2, "mean,lstm", 64
        a.n_essays, a.single_requests = min(a.n_essays, 64), min(a.single_requests, 10)
        a.cpu_essays, a.clients, a.request_batch = min(a.cpu_essays, 16), 2, 8
        a.instances, a.gpu_batch, a.gbdt_workers = 1, 16, 0
        a.student_instances, a.tokenizer_threads = None, 2
        a.student_essays, a.gbdt_train_essays = 40, 80
        unique, ids = unique[:24], ids[:24]
    extra = [] if a.tiny else [
        *([] if train is None else [train["full_text"].astype(str).tolist()]),
        *(_read(p)["full_text"].astype(str).tolist() for p in a.extra_texts)]
    pool = load_pool(unique, *extra)
    texts = repeated(pool, a.n_essays)

    bundle_dir = work / "bundle"
    if a.bundle:
        link_or_copy_tree(Bundle.load(a.bundle).root, bundle_dir)
        backbone = Path(a.student_backbone) if a.student_backbone else None
    else:
        if bundle_dir.exists():
            import shutil

            shutil.rmtree(bundle_dir)
        if a.tiny:
            from aes_core.models.tiny import build_tiny_bert

            backbone = build_tiny_bert(work / "tiny_bert")
        else:
            backbone = Path(a.synthetic_backbone)
        synthetic_bundle(a, bundle_dir, backbone, train, unique[:64], log)
        if a.student_backbone:
            backbone = Path(a.student_backbone)
    bundle = Bundle.load(bundle_dir)
    student_note = None
    if bundle.manifest.student is None:
        if a.no_student:
            student_note = "--no-student"
        elif backbone is not None and train is not None:
            try:
                distill_student(a, bundle_dir, backbone, train, log)
            except Exception as e:  # noqa: BLE001 - the ensemble is still measured
                traceback.print_exc()
                student_note = f"distillation failed: {type(e).__name__}: {e}"
        else:
            student_note = "the bundle has no student and no --student-backbone was given"
        bundle = Bundle.load(bundle_dir)
    if a.build_only:
        log(f"bundle built in {bundle_dir} ({student_note or 'with its student'})")
        return {"bundle": str(bundle_dir), "student_note": student_note}

    serving = ServingSection(
        backend="torch_gpu", triton_repo=str(work / "repo_torch"),
        instance_count=a.instances, student_instance_count=a.student_instances,
        tokenizer_threads=a.tokenizer_threads,
        max_batch_size=max(a.max_batch or a.request_batch, a.request_batch, 1),
        max_queue_delay_us=a.queue_delay_us, request_batch_size=a.request_batch,
        gpu_batch_size=a.gpu_batch, torch_dtype=a.dtype,
        torch_compile="off" if a.no_compile else "triton",
        gbdt_workers=a.gbdt_workers, merge_requests=a.merge_requests,
        cuda_graphs=a.cuda_graphs, cuda_graph_bucket=a.graph_bucket,
        cuda_graph_streams=a.graph_streams, torch_threads=1 if a.tiny else 0,
        token_cache_size=a.token_cache,
        triton_python_paths=_paths(a))
    report: dict[str, Any] = {
        "benchmark": "serving_gpu", "gpu": hw.get("gpu", "none"), "hardware": hw,
        "cuda": torch.cuda.is_available(),
        "bundle": {"source": a.bundle or ("tiny" if a.tiny else "synthetic"),
                   "members": bundle.ensemble.members,
                   "fold_models": sum(len(m.folds) for m in bundle.manifest.members),
                   "max_length": [m.spec.max_length for m in bundle.manifest.members][:1],
                   "student": bundle.manifest.student.model_dump(mode="json")
                   if bundle.manifest.student else None},
        "data": {"unique_essays": len(unique), "throughput_essays": len(texts),
                 "distinct_essays_in_load": len(pool),
                 "student_throughput_essays": a.student_n_essays or len(texts),
                 "token_cache_size": a.token_cache, "labelled": labels is not None},
        "config": {k: v for k, v in vars(a).items() if k not in ("triton_python_paths",)},
        "serving": serving.model_dump(mode="json"),
    }
    report["tokenization"] = tokenizer_paths(
        bundle, unique * max(1, (128 if a.tiny else 4096) // len(unique)))
    log(f"tokenizer paths (essays/s): {report['tokenization']}")
    report["gbdt"] = gbdt_paths(bundle, unique[:16 if a.tiny else 256])
    log(f"GBDT member (one process): {report['gbdt']}")

    json_path = out / "serving_gpu.json"

    def save(completed: bool = False) -> None:
        """The report so far: a run stopped at its time limit keeps what it measured."""
        report["completed"] = completed
        report["total_seconds"] = round(time.time() - t_start, 1)
        json_path.write_text(json.dumps(report, indent=2, default=float))

    def measured(model: str, r: dict[str, Any]) -> None:
        report.setdefault("measured_so_far", {})[model] = {
            k: r[k] for k in ("essays_per_s", "p50_ms_single", "p99_ms_single", "stages")}
        save()

    save()
    served = serve_and_measure(a, bundle, serving, texts, unique, log, measured)
    ens = served["scorer"]
    report["triton_ensemble"] = {
        "members": len(bundle.ensemble.members), "fold_models": report["bundle"]["fold_models"],
        "essays_per_s": ens["essays_per_s"], "p50_ms_single": ens["p50_ms_single"],
        "p99_ms_single": ens["p99_ms_single"], "clients": a.clients,
        "request_batch": a.request_batch, "instances": a.instances,
        "tokenizer_threads": a.tokenizer_threads,
        "backend": served["backend"], "instance_kind": served["instance_kind"],
        "server_start_s": served["server_start_s"], "load": ens["load"],
        "single": ens["single"], "stages": ens["stages"]}
    ref = reference_scores(bundle, serving, unique, student=False)
    report["agreement"] = {"ensemble": agreement(ens["scores"], ref),
                           "reference": "fp32 eager in process", "served": a.dtype
                           if torch.cuda.is_available() else "fp32 (CPU)"}
    report["ensemble_test_qwk"] = labelled_qwk(ids, ens["scores"]["score"], labels)
    if "student" in served:
        st = served["student"]
        sref = reference_scores(bundle, serving, unique, student=True)
        report["agreement"]["student"] = agreement(st["scores"], sref)
        report["student"] = {
            "essays_per_s": st["essays_per_s"], "p50_ms_single": st["p50_ms_single"],
            "p99_ms_single": st["p99_ms_single"],
            "instances": a.student_instances or a.instances,
            "tokenizer_threads": a.tokenizer_threads,
            "test_qwk": labelled_qwk(ids, st["scores"]["score"], labels),
            "agreement_qwk_with_ensemble": float(qwk(ens["scores"]["score"],
                                                     st["scores"]["score"])),
            "load": st["load"], "single": st["single"], "stages": st["stages"]}
    else:
        report["student"] = {"essays_per_s": None, "test_qwk": None,
                             "skipped": student_note or "no student model served"}

    if a.skip_cpu:
        report["cpu_onnx_baseline_essays_per_s"] = None
    else:
        try:
            cpu = cpu_baseline(a, bundle, work, texts[:a.cpu_essays], log)
            report["cpu_onnx"] = cpu
            report["cpu_onnx_baseline_essays_per_s"] = cpu["essays_per_s"]
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            report["cpu_onnx_baseline_essays_per_s"] = None
            report["cpu_onnx"] = {"error": f"{type(e).__name__}: {e}"}
    png = out / "serving_gpu.png"
    plot(report, png)
    report["plot"] = str(png)
    report.pop("measured_so_far", None)
    save(completed=True)
    print_summary(report)
    return report


def print_summary(r: dict) -> None:
    e, s = r["triton_ensemble"], r["student"]
    print(f"\nhardware: gpu={r['gpu']}, cpu={r['hardware'].get('cpu')}, "
          f"cores={r['hardware'].get('cores')}")
    print(f"ensemble ({e['members']} members, {e['fold_models']} fold models, "
          f"{e['backend']}): {e['essays_per_s']:,.1f} essays/s; one essay p50 "
          f"{e['p50_ms_single']:.1f} ms, p99 {e['p99_ms_single']:.1f} ms")
    if s.get("essays_per_s"):
        print(f"student: {s['essays_per_s']:,.1f} essays/s; one essay p99 "
              f"{s['p99_ms_single']:.1f} ms; test QWK {s['test_qwk']}")
    else:
        print(f"student: skipped ({s.get('skipped')})")
    print(f"CPU ONNX baseline: {r['cpu_onnx_baseline_essays_per_s']} essays/s")
    print(f"ensemble test QWK: {r['ensemble_test_qwk']}")
    print(f"agreement (served vs fp32): {json.dumps(r['agreement'])}")
    print(f"tokenizer essays/s: {r['tokenization']}")
    print(f"GBDT member: {r['gbdt']}")
    print(f"plot: {r['plot']}")


if __name__ == "__main__":
    main()
