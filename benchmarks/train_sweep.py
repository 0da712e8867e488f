"""Sweep the training recipe of one backbone x head on out-of-fold essays (no test essay).

Each variant of a sweep file (a name, the weights it starts from, ``train`` and backbone
overrides such as ``chunking``) trains
the head on every selected fold with the product's own partition function
(``aes_core.training.stages.train_fold_head``), all variants' partitions at once over the
profile's worker slots (GPU workers share a GPU through MPS where ``gpu.mps`` allows). Per
variant it reports the out-of-fold QWK over the selected folds, rounded and with score
thresholds fitted on the other folds (nested), the RMSE and the time. Tune here; then run
the pipeline once with the chosen recipe and read ``aes2/test`` once::

    python benchmarks/train_sweep.py --profile gpu-full \\
        --folded STORAGE/tables/folded_essays.parquet \\
        --weights mlm=STORAGE/artifacts/minilm/mlm_backbone --weights raw=var/models/minilm \\
        --sweep benchmarks/sweeps/minilm_recipe.yaml --work /tmp/sweep --out sweep.json

``--folded`` is the ``folded_essays`` table of a run (its folds and flags); ``--weights``
names the backbone folders variants may start from (the first is the default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from aes_core.config import AesConfig, BackboneSection, TrainSection, load_config  # noqa: E402
from aes_core.ensemble.thresholds import cut, fit_thresholds  # noqa: E402
from aes_core.hardware import hardware, usable_cpus  # noqa: E402
from aes_core.metrics import qwk  # noqa: E402
from aes_core.training.parallel import JobFailure  # noqa: E402
from aes_core.training.shared_tokens import share_tokens  # noqa: E402
from aes_core.training.tasks import PartitionTask, run_partitions  # noqa: E402
from aes_resources.gpu import GpuResource  # noqa: E402


class Variant(BaseModel):
    """One recipe: where it starts and what it changes in the backbone's train section."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    weights: str | None = Field(None, description="a --weights name (default: the first)")
    train: dict[str, Any] = Field(default_factory=dict)
    backbone: dict[str, Any] = Field(
        default_factory=dict, description="backbone fields, e.g. {chunking: true}")


class Sweep(BaseModel):
    backbone: str
    head: str = "mean"
    folds: list[int] | None = Field(None, description="None: every fold of the table")
    variants: list[Variant] = Field(min_length=1)


def read_sweep(path: Path) -> Sweep:
    sweep = Sweep.model_validate(yaml.safe_load(Path(path).read_text()))
    names = [v.name for v in sweep.variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: variant names must be unique; repeated: {dup}")
    return sweep


FIXED_BACKBONE_FIELDS = {"name", "path", "train", "heads"}  # set by the sweep itself


def variant_config(cfg: AesConfig, backbone: str, v: Variant) -> AesConfig:
    """``cfg`` with the backbone's section and train section updated by the variant
    (validated; unknown fields are errors that name the variant)."""
    bb = cfg.backbone(backbone)
    allowed = set(BackboneSection.model_fields) - FIXED_BACKBONE_FIELDS
    unknown = sorted(set(v.backbone) - allowed)
    if unknown:
        raise ValueError(f"variant {v.name!r}: backbone field(s) {unknown} cannot be swept "
                         f"(use: {sorted(allowed)})")
    if v.backbone:
        new = BackboneSection.model_validate({**bb.model_dump(), **v.backbone})
        cfg = cfg.model_copy(update={"backbones": [new if b.name == backbone else b
                                                   for b in cfg.backbones]})
    base = cfg.train_for(backbone).model_dump()
    unknown = sorted(set(v.train) - set(base))
    if unknown:
        raise ValueError(f"variant {v.name!r}: unknown train field(s) {unknown}")
    return cfg.with_train(backbone, TrainSection.model_validate({**base, **v.train}))


def token_plan_key(v: Variant) -> str:
    """Variants that read essays the same way (weights, backbone fields) share a token cache."""
    return v.weights + "".join(f"_{k}-{v.backbone[k]}" for k in sorted(v.backbone))


def parse_weights(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--weights {item!r}: use NAME=FOLDER")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--weights {name}: no folder {path}")
        out[name] = path
    return out


def nested_threshold_qwk(table: pd.DataFrame, cfg: AesConfig) -> float:
    """QWK of predictions cut at thresholds fitted on the other folds' essays only."""
    cutted = np.zeros(len(table), dtype=int)
    for f in sorted(table["fold"].unique()):
        held = (table["fold"] == f).to_numpy()
        t, _ = fit_thresholds(table.loc[~held, "pred"].to_numpy(),
                              table.loc[~held, "score"].to_numpy(), cfg.ensemble)
        cutted[held] = cut(table.loc[held, "pred"].to_numpy(), t)
    return qwk(table["score"].to_numpy(), cutted)


def variant_figures(v: Variant, results: list, folded: pd.DataFrame,
                    cfg: AesConfig) -> dict[str, Any]:
    """The variant's OOF figures from its partitions' results (failures listed)."""
    ok = [r for r in results if not isinstance(r, JobFailure)]
    out: dict[str, Any] = {"name": v.name, "weights": v.weights, "train": v.train,
                           "backbone": v.backbone,
                           "failed": [r.summary for r in results if isinstance(r, JobFailure)]}
    if not ok:
        return out
    oof = pd.concat([pd.read_parquet(r.oof_path) for r in ok], ignore_index=True)
    table = oof.merge(folded[["essay_id", "score", "fold"]].astype({"essay_id": str}),
                      on="essay_id", how="left", validate="one_to_one")
    y, p = table["score"].to_numpy(), table["pred"].to_numpy()
    out.update({
        "essays": len(table),
        "oof_qwk_rounded": round(qwk(y, p), 5),
        "oof_qwk_nested_thresholds": round(nested_threshold_qwk(table, cfg), 5)
        if table["fold"].nunique() > 1 else None,
        "rmse": round(float(np.sqrt(np.mean((p - y) ** 2))), 4),
        "mean_error": round(float(np.mean(p - y)), 4),
        "fold_qwk": {str(r.fold): round(r.fold_qwk, 4) for r in ok},
        "kept_stage": {str(r.fold): r.kept_stage for r in ok},
        "stage1_epochs_run": {str(r.fold): r.stage1.epochs_run for r in ok},
        "partition_seconds_mean": round(float(np.mean([r.seconds for r in ok])), 1),
    })
    return out


def plot_sweeps(reports: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars: each variant's OOF QWK (rounded, nested thresholds), one sweep's
    variants after another, with the first variant's nested figure as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for rep in reports for r in rep["variants"] if "essays" in r]
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.4))
    ax.barh(y + 0.2, [r["oof_qwk_nested_thresholds"] or 0 for r in rows], 0.4,
            label="nested thresholds", color="#4c72b0")
    ax.barh(y - 0.2, [r["oof_qwk_rounded"] for r in rows], 0.4, label="rounded",
            color="#bbbbbb")
    for yi, r in zip(y, rows, strict=True):
        ax.text((r["oof_qwk_nested_thresholds"] or 0) + 0.001, yi + 0.2,
                f"{r['oof_qwk_nested_thresholds'] or 0:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    lo = min(r["oof_qwk_rounded"] for r in rows)
    ax.set_xlim(lo - 0.01, max(r["oof_qwk_nested_thresholds"] or 0 for r in rows) + 0.01)
    ax.set_xlabel(f"OOF QWK, {reports[0]['backbone']}/{reports[0]['head']}, "
                  f"{rows[0]['essays']} essays")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("Training recipe variants (benchmarks/train_sweep.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="gpu-full")
    ap.add_argument("--folded", required=True, help="a run's folded_essays table (Parquet)")
    ap.add_argument("--weights", action="append", required=True, help="NAME=FOLDER")
    ap.add_argument("--sweep", required=True, help="YAML: backbone, head, folds, variants")
    ap.add_argument("--only", help="comma-separated variant names to run (default: all)")
    ap.add_argument("--work", required=True, help="folder for the partitions' outputs")
    ap.add_argument("--out", required=True, help="JSON file for the figures")
    ap.add_argument("--plot", help="PNG of the variants' OOF QWK (default: beside --out)")
    a = ap.parse_args(argv)

    cfg = load_config(a.profile)
    sweep = read_sweep(Path(a.sweep))
    weights = parse_weights(a.weights)
    variants = sweep.variants
    if a.only:
        wanted = a.only.split(",")
        missing = sorted(set(wanted) - {v.name for v in variants})
        if missing:
            raise SystemExit(f"--only: no variant(s) {missing} in {a.sweep}")
        variants = [v for v in variants if v.name in wanted]
    default_weights = next(iter(weights))
    for v in variants:
        v.weights = v.weights or default_weights
        if v.weights not in weights:
            raise SystemExit(f"variant {v.name!r}: weights {v.weights!r} not given "
                             f"(--weights: {sorted(weights)})")
    folded = pd.read_parquet(a.folded)
    folds = sweep.folds if sweep.folds is not None else sorted(folded["fold"].unique())
    backbone = cfg.backbone(sweep.backbone)
    if sweep.head not in cfg.heads_for(backbone):
        raise SystemExit(f"head {sweep.head!r} is not one of {sweep.backbone}'s heads "
                         f"{cfg.heads_for(backbone)}")

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    folded_path = work / "folded.parquet"
    folded.to_parquet(folded_path, index=False)
    gpu = GpuResource.from_section(cfg.gpu)
    n_jobs = len(variants) * len(folds)
    slots = gpu.worker_slots(n_jobs, backbone.workers_per_gpu)
    configs = {v.name: variant_config(cfg, sweep.backbone, v) for v in variants}
    plans = {token_plan_key(v): v for v in variants}  # one cache per way of reading essays
    caches = {k: work / f"tokens_{k}" for k in plans}
    tasks, owner = [], []
    for v in variants:
        vcfg = configs[v.name].model_dump_json()
        for f in folds:
            tasks.append(PartitionTask(
                cfg_json=vcfg, backbone=sweep.backbone, backbone_path=weights[v.weights],
                fold=int(f), head=sweep.head, out_dir=str(work / v.name / f"fold{f}"),
                folded_path=str(folded_path), token_cache=str(caches[token_plan_key(v)]),
                **gpu.task_placement(slots)))
            owner.append(v.name)
    # no hardware() before the workers start: it initialises CUDA, and forked workers
    # (gpu.worker_start: fork) cannot use CUDA once their parent has
    print(f"{len(variants)} variant(s) x {len(folds)} fold(s) = {n_jobs} partitions of "
          f"{sweep.backbone}/{sweep.head} on {len(slots)} worker slot(s) "
          f"[{', '.join(sorted({s.describe() for s in slots}))}]", flush=True)

    def tokenize_once() -> None:
        for k, folder in caches.items():
            v = plans[k]
            done = share_tokens(weights[v.weights], configs[v.name].backbone(sweep.backbone),
                                folded["full_text"].astype(str), folder, threads=usable_cpus())
            print(f"tokenized {done.essays} essays for {k} in {done.seconds:.1f}s", flush=True)

    t0, finished = time.time(), [0]

    def on_result(i: int, r) -> None:
        finished[0] += 1
        head = f"[{finished[0]}/{n_jobs} {time.time() - t0:.0f}s] {owner[i]}"
        if isinstance(r, JobFailure):
            print(f"{head} FAILED: {r.summary}", flush=True)
        else:
            print(f"{head} fold {r.fold}: QWK {r.fold_qwk:.4f}, {r.kept_stage}, "
                  f"{r.seconds:.0f}s", flush=True)

    results, mps = run_partitions(tasks, slots, cfg.gpu, on_result, tokenize_once, "sweep")
    seconds = time.time() - t0
    rows = [variant_figures(v, [r for r, o in zip(results, owner, strict=True)
                                if o == v.name], folded, cfg) for v in variants]
    ranked = sorted((r for r in rows if r.get("oof_qwk_nested_thresholds") is not None),
                    key=lambda r: -r["oof_qwk_nested_thresholds"])
    report = {"benchmark": "train_sweep", "hardware": hardware(), "profile": cfg.profile,
              "backbone": sweep.backbone, "head": sweep.head, "folds": [int(f) for f in folds],
              "weights": weights, "workers": len(slots), "mps": mps,
              "wall_seconds": round(seconds, 1), "variants": rows,
              "ranking_nested_thresholds": [r["name"] for r in ranked]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    if any("essays" in r for r in rows):  # nothing to draw when every variant failed
        plot_sweeps([report], Path(a.plot) if a.plot else Path(a.out).with_suffix(".png"))
    print(f"\n{'variant':<22}{'rounded':>9}{'nested':>9}{'rmse':>8}{'bias':>8}{'s/part':>8}")
    for r in rows:
        if "essays" not in r:
            print(f"{r['name']:<22} failed: {r['failed'][:1]}")
            continue
        nested = r["oof_qwk_nested_thresholds"]
        print(f"{r['name']:<22}{r['oof_qwk_rounded']:>9.4f}"
              f"{nested if nested is not None else float('nan'):>9.4f}{r['rmse']:>8.3f}"
              f"{r['mean_error']:>+8.3f}{r['partition_seconds_mean']:>8.0f}")
    print(f"{n_jobs} partitions in {seconds:.0f}s; {hardware().get('gpu', '')}")
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
