"""The whole pipeline without Dagster, for a GPU machine: quality and training figures.

Runs what the asset graph runs — PERSUADE join + MSKF folds, masked-LM pretraining, every
fold x head two-stage partition (several partitions at once on one GPU), OOF table, the GBDT
member, Nelder-Mead ensemble, test predictions, ONNX export + parity — with the same library
code (aes_core), and prints/writes the figures BENCHMARKS.md reports:

* quality: QWK on the labelled test split of every member, the equal blend, the optimized
  blend (with and without GBDT), and the TF-IDF + LightGBM baseline trained on the same folds;
* training: tokens/s, minutes per fold x head, peak GPU memory, wall time of the whole run.

Partitions that already finished in ``--work`` are reused, so a run cut by a time limit
continues where it stopped. ``--extra-members`` blends in members from an earlier run (e.g.
another backbone): a parquet written by this script (``members_<backbone>.parquet``).

    python benchmarks/gpu_pipeline.py --profile gpu-full --data-dir DATA \
        --backbone minilm=PATH/TO/minilm --out results/ --workers 4

``DATA`` holds ``aes2/`` and ``persuade/``; ``--backbone`` defaults to the profile's backbones.

On CPU (CI) it runs with a tiny profile: ``--profile path/to/tiny.yaml --workers 1``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.config import AesConfig, load_config  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.members import (  # noqa: E402
    GBDT_MEMBER,
    OOF_META_COLUMNS,
    member_columns,
    member_name,
)
from aes_core.metrics import qwk  # noqa: E402


def _device() -> tuple[str, Any, dict[str, Any]]:
    import torch

    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        prec = "bf16-mixed" if dtype == torch.bfloat16 else "16-mixed"
        return "cuda", dtype, {"accelerator": "gpu", "devices": [0], "precision": prec}
    return "cpu", None, {"accelerator": "cpu", "devices": 1, "precision": "32-true"}


def _train_partition(args: tuple) -> dict[str, Any]:
    """One fold x head: both stages, then predictions on the test essays (in a worker)."""
    cfg_json, bb_name, bb_path, fold, head, out_dir, folded_path, test_path, threads = args
    import torch

    torch.set_num_threads(threads)
    from aes_core.models.regressor import (
        EssayRegressor,
        load_regressor_tokenizer,
        logits_to_scores,
    )
    from aes_core.training.datamodule import EssayDataset, predict_logits
    from aes_core.training.stages import RESULT_FILE, FoldHeadJob, train_fold_head

    cfg = AesConfig.model_validate_json(cfg_json)
    # essays are tokenized up front and collation is cheap: loader worker processes only add
    # start-up cost here, and would be grandchildren of the partition pool
    cfg.train.num_workers = 0
    device, amp, trainer_kwargs = _device()
    out_dir = Path(out_dir)
    t0 = time.time()
    try:
        if (out_dir / RESULT_FILE).exists():
            result = json.loads((out_dir / RESULT_FILE).read_text())
            result["reused"] = True
        else:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            job = FoldHeadJob(cfg=cfg, backbone=cfg.backbone(bb_name), backbone_path=Path(bb_path),
                              fold=fold, head=head, out_dir=out_dir,
                              trainer_kwargs=trainer_kwargs, device=device, amp_dtype=amp,
                              progress=False)
            result = train_fold_head(job, pd.read_parquet(folded_path))
            result["reused"] = False
        result["train_seconds"] = time.time() - t0
        result["peak_gpu_gib"] = (torch.cuda.max_memory_allocated() / 2**30
                                  if device == "cuda" else 0.0)
        test = pd.read_parquet(test_path)
        model = EssayRegressor.from_pretrained(result["model_dir"])
        tok = load_regressor_tokenizer(result["model_dir"])
        ds = EssayDataset(test["full_text"].tolist(), tok, model.spec)  # truncated or windows
        t1 = time.time()
        logits = predict_logits(model, ds, tok, cfg.train.eval_batch_size, device, amp)
        result["test_pred"] = logits_to_scores(torch.from_numpy(logits),
                                               model.spec.loss).numpy().tolist()
        result["test_seconds"] = time.time() - t1
        return result
    except Exception:  # report, don't kill the pool
        return {"fold": fold, "head": head, "backbone": bb_name,
                "error": traceback.format_exc()}


def _token_lengths(texts: list[str], backbone_path: str, max_length: int) -> np.ndarray:
    from aes_core.models.backbone import load_tokenizer

    tok = load_tokenizer(backbone_path)
    enc = tok(texts, truncation=True, max_length=max_length)
    return np.array([len(x) for x in enc["input_ids"]])


def _fit_gbdt(cfg_json: str, folded_path: str, test_path: str, cache: str, queue) -> None:
    """GBDT member in its own process so it trains on the CPU while the GPU trains."""
    try:
        if Path(cache).exists():
            queue.put(json.loads(Path(cache).read_text()))
            return
        from aes_core.ensemble.gbdt import fit_gbdt

        cfg = AesConfig.model_validate_json(cfg_json)
        t0 = time.time()
        fit = fit_gbdt(pd.read_parquet(folded_path), cfg.gbdt, progress=False)
        test = pd.read_parquet(test_path)
        pred = fit.member.predict(test["full_text"].tolist())
        res = {"oof": fit.oof.to_dict("list"), "test_pred": np.asarray(pred).tolist(),
               "oof_qwk": fit.oof_qwk, "seconds": time.time() - t0}
        Path(cache).write_text(json.dumps(res))
        queue.put(res)
    except Exception:
        queue.put({"error": traceback.format_exc()})


def ensemble_on_test(table: pd.DataFrame, test_preds: pd.DataFrame, test_y: np.ndarray,
                      cfg: AesConfig) -> dict[str, Any]:
    """Fit on OOF only; report each candidate's QWK on the test split."""
    from aes_core.ensemble.blend import fit_ensemble
    from aes_core.ensemble.thresholds import cut

    fit = fit_ensemble(table, cfg.ensemble)
    art = fit.artifact
    out: dict[str, Any] = {"members": art.members, "weights": dict(zip(art.members, art.weights,
                                                                        strict=True)),
                           "thresholds": art.thresholds, "selected": getattr(art, "selected", ""),
                           "oof_qwk": art.oof_qwk, "test_qwk": {}}
    P = test_preds[art.members].to_numpy(dtype=np.float64)
    for name, cand in fit.candidates.items():
        out["test_qwk"][name] = qwk(test_y, cut(P @ cand.weights, cand.thresholds))
    out["test_qwk"]["blend"] = qwk(test_y, art.to_scores(art.blend(P)))
    out["test_qwk_rounded"] = {m: qwk(test_y, test_preds[m].to_numpy()) for m in art.members}
    out["test_qwk_rounded"]["equal_blend"] = qwk(test_y, P.mean(axis=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="gpu-full")
    ap.add_argument("--data-dir", help="folder with aes2/ and persuade/ (overrides data paths)")
    ap.add_argument("--backbone", action="append", default=[],
                    help="name=path of a local HF folder (repeatable); default: the profile's")
    ap.add_argument("--heads", help="comma-separated subset of heads")
    ap.add_argument("--folds", help="comma-separated subset of folds")
    ap.add_argument("--workers", type=int, default=4, help="partitions trained at once")
    ap.add_argument("--time-budget", type=float, default=float("inf"),
                    help="seconds after which no new partition starts (resume later)")
    ap.add_argument("--work", default="/tmp/aes_gpu", help="work folder (resumable)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--skip-mlm", action="store_true")
    ap.add_argument("--no-gbdt", action="store_true")
    ap.add_argument("--extra-members", action="append", default=[],
                    help="members_<backbone>.parquet from an earlier run to blend in")
    ap.add_argument("--set", action="append", default=[],
                    help="override, e.g. train.stage1_epochs=2 (YAML value)")
    a = ap.parse_args(argv)

    import yaml

    overrides: dict[str, Any] = {}
    if a.data_dir:
        d = Path(a.data_dir).resolve()
        unl = d / "persuade/unlabelled_essays.csv.gz"
        overrides["data"] = {
            "train_path": str(d / "aes2/train.csv.gz"), "test_path": str(d / "aes2/test.csv.gz"),
            "test_labels_path": str(d / "aes2/test_score.csv.gz"),
            "persuade_path": str(d / "persuade/persuade_reference.csv.gz"),
            "unlabelled_path": str(unl) if unl.exists() else None}
    base_cfg = load_config(a.profile)
    if a.backbone:
        bbs = []
        for spec in a.backbone:
            name, path = spec.split("=", 1)
            try:
                known = base_cfg.backbone(name).model_dump()
            except KeyError:
                known = base_cfg.backbones[0].model_dump() | {"name": name}
            bbs.append(known | {"path": str(Path(path).resolve())})
        overrides["backbones"] = bbs
    for item in a.set:
        key, value = item.split("=", 1)
        node = overrides
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    cfg = load_config(a.profile, overrides)
    heads = a.heads.split(",") if a.heads else list(cfg.heads.heads)
    folds = [int(f) for f in a.folds.split(",")] if a.folds else list(range(cfg.folds.n_folds))
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"hardware": hardware(), "profile": cfg.profile,
                              "heads": heads, "folds": folds, "workers": a.workers}
    print(json.dumps(report["hardware"]), flush=True)
    t_start = time.time()

    from aes_core.data import io
    from aes_core.data.folds import build_folded
    from aes_core.mlm import run_mlm
    from aes_core.models.backbone import resolve_backbone_path

    folded, jr = build_folded(io.load_train(cfg.data.train_path),
                              io.load_persuade(cfg.data.persuade_path), cfg.folds)
    test = io.load_essays(cfg.data.test_path)
    labels = io.load_labels(cfg.data.test_labels_path).set_index("essay_id")["score"]
    test_y = test["essay_id"].map(labels).to_numpy(dtype=int)
    folded_path, test_path = work / "folded.parquet", work / "test.parquet"
    folded.to_parquet(folded_path, index=False)
    test.to_parquet(test_path, index=False)
    report["data"] = {"train": len(folded), "test": len(test), "flag_rule": jr.flag_rule,
                      "flag_1": jr.flag_1}
    cfg_json = cfg.model_dump_json()

    ctx = mp.get_context("spawn")
    gbdt_q = ctx.Queue()
    gbdt_proc = None
    if cfg.gbdt.enabled and not a.no_gbdt:
        gbdt_proc = ctx.Process(target=_fit_gbdt, args=(cfg_json, str(folded_path),
                                                        str(test_path), str(work / "gbdt.json"),
                                                        gbdt_q))
        gbdt_proc.start()

    device, amp, _ = _device()
    members_test = pd.DataFrame({"essay_id": test["essay_id"]})
    oof = folded[list(OOF_META_COLUMNS)].copy()
    report["backbones"] = {}
    for bb in cfg.backbones:
        base = resolve_backbone_path(bb)
        bb_report: dict[str, Any] = {"base_path": str(base)}
        mlm_dir = work / bb.name / "mlm"
        path = base
        if cfg.mlm.enabled and bb.use_mlm and not a.skip_mlm:
            if (mlm_dir / "mlm_result.json").exists():
                bb_report["mlm"] = json.loads((mlm_dir / "mlm_result.json").read_text())
            else:
                texts = folded["full_text"].tolist()
                if cfg.data.unlabelled_path:
                    texts += io.load_unlabelled(cfg.data.unlabelled_path)["full_text"].tolist()
                t0 = time.time()
                res = run_mlm(base, mlm_dir, texts, cfg.mlm, bb.add_newline_tokens, device, amp,
                              progress=False, num_layers=bb.num_layers)
                res["wall_seconds"] = time.time() - t0
                (mlm_dir / "mlm_result.json").write_text(json.dumps(res))
                bb_report["mlm"] = res
            path = mlm_dir
            print(f"[{bb.name}] mlm: {bb_report['mlm']}", flush=True)

        lengths = dict(zip(folded["essay_id"], _token_lengths(folded["full_text"].tolist(),
                                                              str(base), bb.max_length),
                           strict=True))
        jobs = [(cfg_json, bb.name, str(path), f, h, str(work / bb.name / f"fold{f}_{h}"),
                 str(folded_path), str(test_path), max(1, (os.cpu_count() or 2) // a.workers))
                for f in folds for h in heads]
        t0 = time.time()
        results = []
        pending = list(jobs)
        with ProcessPoolExecutor(a.workers, mp_context=ctx) as pool:
            running = set()
            while pending or running:
                while pending and len(running) < a.workers and (
                        time.time() - t_start < a.time_budget):
                    running.add(pool.submit(_train_partition, pending.pop(0)))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    r = fut.result()
                    if "error" in r:
                        print(f"[{bb.name}] fold {r['fold']} {r['head']} FAILED:\n"
                              f"{r['error']}", flush=True)
                    else:
                        print(f"[{bb.name}] fold {r['fold']} {r['head']}: fold QWK "
                              f"{r['fold_qwk']:.4f} in {r['train_seconds']:.0f}s", flush=True)
                    results.append(r)
        if pending:
            print(f"[{bb.name}] time budget reached: {len(pending)} partition(s) not started; "
                  f"run again with the same --work to continue", flush=True)
            bb_report["not_started"] = [(j[3], j[4]) for j in pending]
        train_wall = time.time() - t0
        ok = [r for r in results if "error" not in r]
        tokens = 0
        for r in ok:
            f = r["fold"]
            s1 = folded[folded["fold"] != f]
            s2 = s1[s1["flag"] == 1]
            for stage, rows in (("stage1", s1), ("stage2", s2)):
                info = r.get(stage) or {}
                if info and not r.get("reused"):
                    tokens += int(info.get("epochs_run", 0)) * int(rows["essay_id"].map(
                        lengths).sum())
        bb_report.update({
            "partitions": len(ok), "failed": [(r["fold"], r["head"]) for r in results
                                              if "error" in r],
            "train_wall_seconds": train_wall,
            "train_tokens": tokens, "tokens_per_second": tokens / train_wall if tokens else None,
            "minutes_per_partition": float(np.mean([r["train_seconds"] for r in ok]) / 60)
            if ok else None,
            "peak_gpu_gib": max([r["peak_gpu_gib"] for r in ok], default=0.0),
            "fold_qwk": {f"{r['fold']}/{r['head']}": r["fold_qwk"] for r in ok},
        })
        for h in heads:
            m = member_name(bb.name, h)
            rs = [r for r in ok if r["head"] == h]
            if len(rs) != len(folds):
                continue
            col = pd.Series(np.nan, index=oof.index)
            for r in rs:
                p = pd.read_parquet(r["oof_path"]).set_index("essay_id")["pred"]
                sel = oof["fold"] == r["fold"]
                col[sel] = oof.loc[sel, "essay_id"].map(p).to_numpy()
            oof[m] = col
            members_test[m] = np.mean([r["test_pred"] for r in rs], axis=0)
        report["backbones"][bb.name] = bb_report
        own = [m for m in (member_name(bb.name, h) for h in heads) if m in oof.columns]
        pd.concat([oof.set_index("essay_id")[own].add_prefix("oof:"),
                   members_test.set_index("essay_id")[own].add_prefix("test:")],
                  axis=0).reset_index().to_parquet(out / f"members_{bb.name}.parquet")

    for extra in a.extra_members:
        ex = pd.read_parquet(extra).set_index("essay_id")
        for c in ex.columns:
            kind, m = c.split(":", 1)
            target = oof if kind == "oof" else members_test
            target[m] = target["essay_id"].map(ex[c].dropna()).to_numpy()

    if gbdt_proc is not None:
        g = gbdt_q.get()
        gbdt_proc.join()
        if "error" in g:
            print(f"GBDT failed:\n{g['error']}", flush=True)
        else:
            gdf = pd.DataFrame(g["oof"]).set_index("essay_id")[GBDT_MEMBER]
            oof[GBDT_MEMBER] = oof["essay_id"].map(gdf).to_numpy()
            members_test[GBDT_MEMBER] = g["test_pred"]
            report[GBDT_MEMBER] = {"oof_qwk": g["oof_qwk"], "seconds": g["seconds"],
                              "test_qwk_rounded": qwk(test_y, np.asarray(g["test_pred"]))}

    members = member_columns(oof)
    # with --folds (or an extra parquet from a smaller run) only some essays have every
    # member's OOF prediction: the ensemble is fitted on those, and says so
    full = oof.dropna(subset=members)
    if len(full) < len(oof):
        print(f"ensemble: {len(full)} of {len(oof)} essays have an OOF prediction from every "
              f"member; fitting on those", flush=True)
        report["ensemble_rows"] = len(full)
    if members and full["fold"].nunique() < 2:
        print("ensemble skipped: OOF predictions cover fewer than 2 folds", flush=True)
    elif members:
        try:
            report["ensemble"] = ensemble_on_test(full, members_test, test_y, cfg)
            transformers = [m for m in members if m != GBDT_MEMBER]
            if GBDT_MEMBER in members and transformers:
                report["ensemble_without_gbdt"] = ensemble_on_test(
                    full.drop(columns=GBDT_MEMBER), members_test, test_y, cfg)
            if GBDT_MEMBER in members:
                report["baseline_gbdt_alone"] = ensemble_on_test(
                    full[[*OOF_META_COLUMNS, GBDT_MEMBER]],
                    members_test, test_y, cfg)
        except Exception:  # the trained members and their files matter more than the blend
            report["ensemble_error"] = traceback.format_exc()
            print(f"ensemble failed:\n{report['ensemble_error']}", flush=True)
    oof.to_parquet(out / "oof.parquet", index=False)
    members_test.to_parquet(out / "test_members.parquet", index=False)

    # ONNX export + parity of one checkpoint (ONNX Runtime on the CPU)
    first = next((work / bb.name / f"fold{folds[0]}_{heads[0]}" / "model"
                  for bb in cfg.backbones), None)
    if first is not None and first.exists():
        from aes_core.export.onnx import check_parity, export_onnx

        t0 = time.time()
        onnx_path = export_onnx(first, work / "onnx_check", cfg.export.opset)
        par = check_parity(first, onnx_path, test["full_text"].head(
            cfg.export.parity_essays).tolist(), cfg.export.parity_atol)
        report["onnx_parity"] = {**par.to_dict(), "seconds": time.time() - t0,
                                 "model": str(first)}
    report["wall_minutes"] = (time.time() - t_start) / 60
    (out / "gpu_pipeline.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k not in ("hardware",)}, indent=1,
                     default=str)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
