"""Quality of a pipeline run on the labelled test split, with an ablation over the ensemble.

Reads what the run stored — the OOF table, the GBDT OOF column, the folded essays and the
submission's per-member test predictions — and refits the ensemble (``aes_core.ensemble``,
on OOF only, with the run's profile settings) for each configuration of the ablation:
member groups (transformers only, GBDT alone, everything) and the ensemble method
(Nelder-Mead, stacker, auto). Each configuration's test QWK is computed once. It also reports
QWK on the essays longer than the backbone's window (the truncated subset).

    python benchmarks/quality_report.py --storage /path/to/storage_root --profile gpu-full \
        --out benchmarks/results/quality.json

Members trained in other runs on the same folds (another seed, loss or backbone) join with
``--with-run`` (repeatable); ``--groups FILE`` then evaluates named configurations instead of
the standard ablation. The file maps each name to its members, each member to the columns it
averages (``{"seeds averaged": {"mpnet__mean": ["mpnet__mean", "mpnet_s43__mean"],
"gbdt": ["gbdt"]}}``); every configuration is fitted with the shipped rule (``auto``) and
scored on test once, only those named by ``--test-groups`` when given::

    python benchmarks/quality_report.py --storage RUN1 --with-run RUN2 --profile \
        gpu-two-backbones --groups groups.json --test-groups "seeds averaged" --out q.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.config import AesConfig, load_config  # noqa: E402
from aes_core.ensemble.blend import assemble_oof, fit_ensemble  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.members import GBDT_MEMBER, member_columns  # noqa: E402
from aes_core.metrics import qwk  # noqa: E402

MEMBER_PREDICTIONS = "test_member_predictions.parquet"


def load_run(storage: Path) -> dict[str, pd.DataFrame]:
    tables = storage / "tables"
    return {"oof": pd.read_parquet(tables / "oof_predictions.parquet"),
            "gbdt_oof": pd.read_parquet(tables / "gbdt_oof.parquet"),
            "folded": pd.read_parquet(tables / "folded_essays.parquet"),
            "test": pd.read_parquet(tables / "test_essays.parquet"),
            "test_preds": (pd.read_parquet(storage / MEMBER_PREDICTIONS)
                           if (storage / MEMBER_PREDICTIONS).exists() else None)}


def run_tables(run: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The run's assembled OOF table and its test predictions in test-essay order."""
    table = assemble_oof(run["oof"], run["gbdt_oof"])
    preds = run["test_preds"]
    if preds is not None:
        order = run["test"]["essay_id"].astype(str)
        preds = preds.assign(essay_id=lambda d: d["essay_id"].astype(str))
        preds = preds.set_index("essay_id").loc[order].reset_index()
    return table, preds


def folded_by_id(run: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The run's folded essays indexed by essay id (as text, like the OOF table's)."""
    return run["folded"].assign(essay_id=lambda d: d["essay_id"].astype(str)).set_index(
        "essay_id")


def merge_members(table: pd.DataFrame, preds: pd.DataFrame | None, other: pd.DataFrame,
                  other_preds: pd.DataFrame | None, name: str
                  ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Add the transformer members of another run (``other``: its assembled OOF table) to
    ``table`` and ``preds``. Its essays and folds must be the same; its GBDT column, equal by
    construction when the GBDT settings are, is not taken. Raises ValueError otherwise."""
    ids = table["essay_id"]
    if set(other["essay_id"]) != set(ids):
        raise ValueError(f"{name}: its OOF essays differ from the first run's "
                         f"({len(other)} vs {len(table)} essays)")
    other = other.set_index("essay_id").loc[ids].reset_index()
    moved = int((other["fold"].to_numpy() != table["fold"].to_numpy()).sum())
    if moved:
        raise ValueError(f"{name}: {moved} essays sit in another fold than in the first run; "
                         "members of different folds cannot be blended honestly")
    new = [m for m in member_columns(other) if m != GBDT_MEMBER]
    clash = [m for m in new if m in table.columns]
    if clash:
        raise ValueError(f"{name}: member(s) {clash} are already in the first run; give the "
                         "backbone another name in one of the runs")
    if (preds is None) != (other_preds is None):
        raise ValueError(f"{name}: only one of the runs wrote {MEMBER_PREDICTIONS}")
    table = table.assign(**{m: other[m].to_numpy() for m in new})
    if preds is not None and other_preds is not None:
        theirs = other_preds.set_index("essay_id")
        missing = preds["essay_id"][~preds["essay_id"].isin(theirs.index)]
        if len(missing):
            raise ValueError(f"{name}: no test prediction for {len(missing)} test essays of "
                             f"the first run (e.g. {missing.iloc[0]})")
        theirs = theirs.loc[preds["essay_id"], new]  # the first run's test order
        preds = preds.assign(**{m: theirs[m].to_numpy() for m in new})
    return table, preds


def evaluate(table: pd.DataFrame, texts: list[str], test_preds: pd.DataFrame | None,
             test_texts: list[str], y_test: np.ndarray, cfg: AesConfig, method: str
             ) -> dict[str, Any]:
    """Fit one configuration on OOF; its QWK on test (once, when the run scored it), OOF and
    nested CV."""
    ecfg = cfg.ensemble.model_copy(update={"method": method})
    fit = fit_ensemble(table, ecfg, texts=texts)
    art = fit.artifact
    test_qwk = None
    if test_preds is not None:
        preds = test_preds[art.members].to_numpy(dtype=np.float64)
        test_qwk = qwk(y_test, art.to_scores(art.blend(preds, test_texts)))
    return {"fit": fit, "members": art.members, "method": art.method, "test_qwk": test_qwk,
            "oof_qwk": art.oof_qwk["blend"], "nested_cv_qwk": art.oof_qwk.get("blend_nested"),
            "nested": getattr(art, "nested_qwk", {})}


def truncated_subset(folded: pd.DataFrame, cfg: AesConfig) -> np.ndarray:
    """Essays with more tokens than the first backbone's window (they are cut when truncated)."""
    from aes_core.models.backbone import load_tokenizer, resolve_backbone_path

    bb = cfg.backbones[0]
    tok = load_tokenizer(resolve_backbone_path(bb), bb.add_newline_tokens)
    lengths = [len(ids) for ids in tok(folded["full_text"].tolist(),
                                       add_special_tokens=True, verbose=False)["input_ids"]]
    return np.asarray(lengths) > bb.max_length


def report(storage: Path, cfg: AesConfig, plots: Path | None = None,
           methods: tuple[str, ...] = ("nelder_mead", "stacker", "auto")) -> dict[str, Any]:
    """The quality JSON; with ``plots``, the scoring report's plots (confusion matrix per score,
    calibration, member QWK) of the shipped configuration on OOF, written there."""
    run = load_run(storage)
    table, preds = run_tables(run)
    folded = folded_by_id(run)
    texts = table["essay_id"].map(folded["full_text"]).tolist()
    test = run["test"].assign(essay_id=lambda d: d["essay_id"].astype(str))
    y_test = test["score"].astype(int).to_numpy()
    test_texts = test["full_text"].tolist()
    members = member_columns(table)
    transformers = [m for m in members if m != GBDT_MEMBER]
    meta = [c for c in table.columns if c not in members]
    out: dict[str, Any] = {"data": "aes2/test" if preds is not None else
                           f"OOF only: the run wrote no {MEMBER_PREDICTIONS}",
                           "test_essays": len(test) if preds is not None else 0,
                           "oof_essays": len(table), "hardware": hardware(),
                           "test_qwk": {}, "oof_qwk": {}, "ablation": []}
    for m in members:  # each member alone, rounded (no fitted thresholds)
        out["test_qwk"][m] = (qwk(y_test, np.clip(np.rint(preds[m]), 1, 6))
                              if preds is not None else None)
        out["oof_qwk"][m] = qwk(table["score"], np.clip(np.rint(table[m]), 1, 6))
    groups = {"GBDT alone": [GBDT_MEMBER], "transformers only": transformers,
              "everything": members}
    for name, group in groups.items():
        if not group or any(m not in members for m in group):
            continue
        sub = table[[*meta, *group]]
        for method in (["nelder_mead"] if len(group) == 1 else methods):
            r = evaluate(sub, texts, preds, test_texts, y_test, cfg, method)
            fit = r.pop("fit")
            if plots is not None and name == "everything" and method == "auto":
                from aes_core.report import build_report

                out["plots"] = {k: str(v) for k, v in
                                build_report(fit.table, fit.artifact, plots).plots.items()}
            out["ablation"].append({"lever": f"{name} / {method}", **r})
            print(f"{name:18s} {method:12s} test {_fmt(r['test_qwk'])}  OOF {r['oof_qwk']:.4f}"
                  f"  nested {r['nested_cv_qwk']}", flush=True)
    shipped = next(a for a in out["ablation"] if a["lever"] == "everything / auto")
    gbdt = next(a for a in out["ablation"] if a["lever"] == "GBDT alone / nelder_mead")
    out["test_qwk"].update({"ensemble": shipped["test_qwk"], "gbdt_alone": gbdt["test_qwk"]})
    out["oof_qwk"].update({"ensemble": shipped["oof_qwk"], "gbdt_alone": gbdt["oof_qwk"]})
    out["nested_cv_qwk"] = shipped["nested_cv_qwk"]
    out["gain_over_gbdt"] = (shipped["test_qwk"] - gbdt["test_qwk"]
                             if preds is not None else None)
    out["nested_gain_over_gbdt"] = shipped["nested_cv_qwk"] - gbdt["nested_cv_qwk"]
    long = truncated_subset(folded.loc[table["essay_id"]].reset_index(), cfg)
    out["truncated_subset"] = {
        "essays": int(long.sum()), "share": float(long.mean()),
        "oof_qwk_rounded": {m: qwk(table.loc[long, "score"],
                                   np.clip(np.rint(table.loc[long, m]), 1, 6))
                            for m in members},
        "oof_mean_error": {m: float((table.loc[long, m] - table.loc[long, "score"]).mean())
                           for m in members}}
    return out


def report_groups(storages: list[Path], cfg: AesConfig, groups: dict[str, dict[str, list[str]]],
                  test_groups: set[str] | None = None) -> dict[str, Any]:
    """Named configurations over the members of one or more runs on the same folds: each
    member of a configuration is the mean of its source columns; fitted with the shipped rule
    (``auto``) on OOF, scored on test once when named in ``test_groups`` (all when None)."""
    run = load_run(storages[0])
    table, preds = run_tables(run)
    for path in storages[1:]:
        other = load_run(path)
        table, preds = merge_members(table, preds, *run_tables(other), str(path))
    members = member_columns(table)
    meta = [c for c in table.columns if c not in members]
    texts = table["essay_id"].map(folded_by_id(run)["full_text"]).tolist()
    test = run["test"]
    y_test = test["score"].astype(int).to_numpy()
    out: dict[str, Any] = {"runs": [str(p) for p in storages], "members": members,
                           "oof_essays": len(table), "test_essays": len(test),
                           "hardware": hardware(), "configurations": []}
    for name, spec in groups.items():
        unknown = sorted({c for cols in spec.values() for c in cols} - set(members))
        if unknown:
            raise ValueError(f"configuration {name!r}: unknown member column(s) {unknown}; "
                             f"the runs have {members}")
        sub = table[meta].assign(**{m: table[cols].mean(axis=1) for m, cols in spec.items()})
        scored = preds is not None and (test_groups is None or name in test_groups)
        sub_preds = (preds[["essay_id"]].assign(**{m: preds[cols].mean(axis=1)
                                                   for m, cols in spec.items()})
                     if scored else None)
        r = evaluate(sub, texts, sub_preds, test["full_text"].tolist(), y_test, cfg, "auto")
        r.pop("fit")
        out["configurations"].append({"configuration": name, "columns": spec, **r})
        print(f"{name:32s} {r['method']:12s} test {_fmt(r['test_qwk'])}  OOF "
              f"{r['oof_qwk']:.4f}  nested {r['nested_cv_qwk']}", flush=True)
    return out


def _fmt(x: float | None) -> str:
    return "n/a   " if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True, help="the run's storage_root")
    ap.add_argument("--profile", default="gpu-full", help="ensemble settings of the run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--plots", type=Path, help="write the shipped blend's OOF plots here")
    ap.add_argument("--methods", default="nelder_mead,stacker,auto",
                    help="ensemble methods per member group ('auto' alone also records the "
                         "nested-CV QWK of each method it compared)")
    ap.add_argument("--with-run", action="append", default=[], type=Path,
                    help="another run's storage_root on the same folds: its members join")
    ap.add_argument("--groups", type=Path,
                    help="JSON {configuration: {member: [columns averaged]}}: evaluate these "
                         "instead of the standard ablation")
    ap.add_argument("--test-groups", help="comma-separated configurations to score on test "
                                          "(default: all of --groups)")
    a = ap.parse_args(argv)
    if a.groups is not None:
        tests = set(a.test_groups.split(",")) if a.test_groups else None
        out = report_groups([Path(a.storage), *a.with_run], load_config(a.profile),
                            json.loads(a.groups.read_text()), tests)
        Path(a.out).write_text(json.dumps(out, indent=2, default=float))
        return 0
    if a.with_run:
        ap.error("--with-run needs --groups (which members of the runs to blend)")
    out = report(Path(a.storage), load_config(a.profile), a.plots,
                 tuple(a.methods.split(",")))
    Path(a.out).write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps({k: out[k] for k in ("test_qwk", "nested_cv_qwk", "gain_over_gbdt")},
                     indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
