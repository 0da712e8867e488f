"""Nelder-Mead blend weights and QWK thresholds over the OOF table, with overfitting guards.

The OOF table has one row per training essay (``essay_id, fold, score, ...``) and one float
column per member on the 1..6 scale. :func:`fit_ensemble`:

1. per member, and for the equal-weight blend: QWK rounded and with its own fitted thresholds;
2. weights by Nelder-Mead on ``w = |z| / sum|z|`` (so w >= 0, sum 1), minimizing
   ``-QWK(rounded blend) + rmse_tiebreak * RMSE`` (the RMSE term removes the plateaus of QWK),
   started from equal weights, from each single member and from seeded Dirichlet draws;
3. QWK-optimal thresholds (:mod:`aes_core.ensemble.thresholds`) for each distinct local
   optimum; "optimized" is the one with the best thresholded QWK;
4. the final scorer is the best of {optimized, equal blend, best single member} by OOF QWK
   with thresholds (so it is never worse than the best member on OOF);
5. guards: QWK per fold of the final scorer (the spread), and a nested estimate where weights
   and thresholds are fitted on K-1 folds and scored on the held-out fold — for the blend and
   for each member alone (its thresholds fitted on K-1 folds);
6. with the essay texts, a stacker (:mod:`aes_core.ensemble.stacker`) is fitted beside it and
   ``ensemble.method`` (auto) applies whichever has the better nested-CV QWK.

:func:`blend_beats_best_member` judges the applied blend against the best single member on
those nested figures (in-sample, a blend that may put all weight on one member can never lose).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from tqdm.auto import tqdm

from aes_core.config import AesConfig, EnsembleSection
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.ensemble.thresholds import (
    DEFAULT_THRESHOLDS,
    cut,
    fast_qwk,
    fit_thresholds,
)
from aes_core.members import GBDT_MEMBER, OOF_META_COLUMNS, member_columns, member_name
from aes_core.training.parallel import Mapper, process_map

NELDER_MEAD, STACKER = "nelder_mead", "stacker"

REQUIRED_COLUMNS = ("essay_id", "fold", "score")
PRED_RANGE = (0.5, 6.5)
EQUAL, BLEND = "equal_blend", "blend"


class OofError(ValueError):
    """The OOF table cannot be blended; the message names the members / rows at fault."""


def expected_members(cfg: AesConfig) -> list[str]:
    """``ensemble.members`` if set, else every ``{backbone}__{head}`` (the heads each backbone
    trains) plus ``gbdt`` if enabled."""
    if cfg.ensemble.members:
        return list(cfg.ensemble.members)
    names = [member_name(b.name, h) for b in cfg.backbones for h in cfg.heads_for(b)]
    return names + ([GBDT_MEMBER] if cfg.gbdt.enabled else [])


def _ids(df: pd.DataFrame, mask: np.ndarray, n: int = 5) -> str:
    ids = df.loc[mask, "essay_id"].astype(str).tolist()
    more = f" (+{len(ids) - n} more)" if len(ids) > n else ""
    return f"{ids[:n]}{more}"


def assemble_oof(oof_predictions: pd.DataFrame, gbdt_oof: pd.DataFrame | None = None,
                 expected: Sequence[str] | None = None) -> pd.DataFrame:
    """Join the transformer OOF table with the GBDT OOF and validate it.

    Rows with the same ``essay_id`` are averaged (fold-averaged predictions). Raises
    :class:`OofError` naming missing members, members with NaN (and the essays), and values
    off the 1..6 scale.
    """
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in oof_predictions.columns]
    if missing_cols:
        raise OofError(f"oof_predictions: missing column(s) {missing_cols}; "
                       f"found {list(oof_predictions.columns)}")
    df = oof_predictions.copy()
    df["essay_id"] = df["essay_id"].astype(str)
    members = member_columns(df)
    if df["essay_id"].duplicated().any():
        meta = [c for c in df.columns if c in OOF_META_COLUMNS and c != "essay_id"]
        agg = {**{c: "first" for c in meta}, **{m: "mean" for m in members}}
        df = df.groupby("essay_id", sort=False, as_index=False).agg(agg)
    if gbdt_oof is not None and len(gbdt_oof):
        if "essay_id" not in gbdt_oof.columns or GBDT_MEMBER not in gbdt_oof.columns:
            raise OofError(f"gbdt_oof: expected columns essay_id, gbdt; "
                           f"found {list(gbdt_oof.columns)}")
        if GBDT_MEMBER in df.columns:
            raise OofError("oof_predictions already has a 'gbdt' column and gbdt_oof was given")
        g = gbdt_oof[["essay_id", GBDT_MEMBER]].assign(
            essay_id=lambda d: d["essay_id"].astype(str))
        g = g.groupby("essay_id", as_index=False)[GBDT_MEMBER].mean()
        df = df.merge(g, on="essay_id", how="left")
        members = member_columns(df)
    present = [m for m in members if df[m].notna().any()]
    if expected is not None:
        absent = [m for m in expected if m not in present]
        if absent:
            raise OofError(
                f"OOF table is missing member(s) {absent}: expected {list(expected)}, "
                f"found {present}. Materialize their fold x head partitions (or the GBDT "
                f"member), or set ensemble.members to the members you want to blend.")
    if not members:
        raise OofError(f"OOF table has no member columns (all of {list(df.columns)} are meta)")
    for m in members:
        col = pd.to_numeric(df[m], errors="coerce")
        nan = col.isna().to_numpy()
        if nan.any():
            raise OofError(f"member {m!r}: {int(nan.sum())} of {len(df)} essays have no OOF "
                           f"prediction (NaN), e.g. essay_id {_ids(df, nan)}; is a fold "
                           f"partition missing?")
        off = ((col < PRED_RANGE[0]) | (col > PRED_RANGE[1])).to_numpy()
        if off.any():
            raise OofError(f"member {m!r}: {int(off.sum())} predictions outside the 1..6 scale "
                           f"(e.g. {float(col[off].iloc[0]):.3f} for essay_id "
                           f"{_ids(df, off, 1)})")
        df[m] = col.astype(np.float64)
    score = pd.to_numeric(df["score"], errors="coerce")
    bad = (score.isna() | ~score.isin(range(1, 7))).to_numpy()
    if bad.any():
        raise OofError(f"oof score must be an integer 1..6; bad for essay_id {_ids(df, bad)}")
    df["score"] = score.astype(int)
    df["fold"] = pd.to_numeric(df["fold"], errors="raise").astype(int)
    return df


def normalize_weights(z: np.ndarray) -> np.ndarray:
    """Unconstrained parameters -> weights >= 0 that sum to one (``|z| / sum|z|``)."""
    a = np.abs(np.asarray(z, dtype=np.float64))
    s = a.sum()
    return np.full_like(a, 1.0 / len(a)) if s <= 1e-12 else a / s


def blend_objective(preds: np.ndarray, y: np.ndarray, tiebreak: float):
    """Return f(z) = -QWK(rounded blend) + tiebreak * RMSE(blend, y)."""
    cuts = np.asarray(DEFAULT_THRESHOLDS)

    def f(z: np.ndarray) -> float:
        b = preds @ normalize_weights(z)
        rmse = float(np.sqrt(np.mean((b - y) ** 2)))
        return -fast_qwk(y, cut(b, cuts)) + tiebreak * rmse
    return f


def _clean(z: np.ndarray) -> np.ndarray:
    w = normalize_weights(z)
    w[w < 1e-4] = 0.0  # drop dust so the artifact reads cleanly
    return w / w.sum()


def local_optima(preds: np.ndarray, y: np.ndarray, cfg: EnsembleSection | None = None,
                 mapper: Mapper | None = None) -> list[tuple[float, np.ndarray]]:
    """Nelder-Mead from every start (equal, the ``single_member_starts`` strongest members,
    ``restarts`` Dirichlet draws), over ``mapper`` (a :func:`process_map`) when given.

    Returns (objective, weights) per start, best first; weights are >= 0 and sum to one.
    """
    cfg = cfg or EnsembleSection()
    preds = np.asarray(preds, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_members = preds.shape[1]
    if n_members == 1:
        return [(0.0, np.ones(1))]
    rng = np.random.default_rng(cfg.seed)
    starts = [np.full(n_members, 1.0 / n_members)]
    cuts = np.asarray(DEFAULT_THRESHOLDS)
    alone = [fast_qwk(y, cut(preds[:, j], cuts)) for j in range(n_members)]
    top = np.argsort(alone)[::-1][:cfg.single_member_starts]  # the strongest members
    starts += [np.eye(n_members)[j] * 0.9 + 0.1 / n_members for j in sorted(top)]
    starts += [rng.dirichlet(np.ones(n_members)) for _ in range(cfg.restarts)]
    jobs = [(preds, y, z0, cfg) for z0 in starts]
    if mapper is not None:
        found = mapper(_descend, jobs)
    else:
        with process_map(min(cfg.n_jobs, len(starts))) as own:
            found = own(_descend, jobs)
    return sorted(found, key=lambda t: t[0])


def _descend(job: tuple[np.ndarray, np.ndarray, np.ndarray, EnsembleSection]
             ) -> tuple[float, np.ndarray]:
    """One Nelder-Mead descent from ``z0``: (objective, cleaned weights)."""
    preds, y, z0, cfg = job
    f = blend_objective(preds, y, cfg.rmse_tiebreak)
    res = minimize(f, z0, method="Nelder-Mead",
                   options={"maxiter": cfg.max_iter, "xatol": 1e-4, "fatol": 1e-7,
                            "adaptive": len(z0) > 3})
    w = _clean(res.x)
    return f(w), w


def optimize_weights(preds: np.ndarray, y: np.ndarray,
                     cfg: EnsembleSection | None = None) -> np.ndarray:
    """Nelder-Mead weights (>= 0, sum 1) over [N, M] member predictions, several restarts."""
    return local_optima(preds, y, cfg)[0][1]


@dataclass
class Candidate:
    name: str
    weights: np.ndarray
    thresholds: list[float]
    qwk: float


def fit_weights_and_thresholds(preds: np.ndarray, y: np.ndarray, members: Sequence[str],
                               cfg: EnsembleSection, mapper: Mapper | None = None
                               ) -> tuple[Candidate, dict[str, Candidate]]:
    """Optimized, equal and single-member candidates, each with fitted thresholds; best first
    (the Nelder-Mead starts over ``mapper``, see :func:`local_optima`)."""
    m = len(members)
    cands: dict[str, Candidate] = {}
    # every distinct Nelder-Mead optimum gets its own thresholds; the best one is "optimized"
    seen: list[np.ndarray] = []
    for _, w in local_optima(preds, y, cfg, mapper):
        if any(np.abs(w - v).max() < 1e-3 for v in seen):
            continue
        seen.append(w)
        t, q = fit_thresholds(preds @ w, y, cfg)
        if "optimized" not in cands or q > cands["optimized"].qwk + 1e-12:
            cands["optimized"] = Candidate("optimized", w, t, q)
    for name, w in [(EQUAL, np.full(m, 1 / m)), *[(mem, np.eye(m)[j])
                                                 for j, mem in enumerate(members)]]:
        t, q = fit_thresholds(preds @ w, y, cfg)
        cands[name] = Candidate(name, w, t, q)
    order = ["optimized", EQUAL, *members]  # ties go to the optimized blend
    best = max(order, key=lambda k: (cands[k].qwk, -order.index(k)))
    return cands[best], cands


@dataclass
class EnsembleFit:
    """The artifact plus what the report needs: blended OOF values and final scores."""

    artifact: EnsembleArtifact
    table: pd.DataFrame                       # OOF table + blended, pred_score
    candidates: dict[str, Candidate] = field(default_factory=dict)
    nested_fold_qwk: list[float] = field(default_factory=list)
    stacker: Any = None                        # StackerFit of the best stacker, if fitted

    @property
    def best_member(self) -> tuple[str, float]:
        q = {m: self.artifact.oof_qwk[m] for m in self.artifact.members}
        name = max(q, key=q.get)
        return name, q[name]


def nested_member_qwk(preds: np.ndarray, y: np.ndarray, folds: np.ndarray,
                      members: Sequence[str], cfg: EnsembleSection) -> dict[str, float]:
    """Each member alone, its thresholds fitted on K-1 folds and applied to the held-out fold."""
    out = {}
    for j, m in enumerate(members):
        held = np.zeros(len(y), dtype=np.int64)
        for k in np.unique(folds):
            tr, va = folds != k, folds == k
            t, _ = fit_thresholds(preds[tr, j], y[tr], cfg)
            held[va] = cut(preds[va, j], t)
        out[m] = round(fast_qwk(y, held), 6)
    return out


def _fit_and_nest(preds: np.ndarray, y: np.ndarray, folds: np.ndarray, fold_ids: list[int],
                  members: Sequence[str], cfg: EnsembleSection, mapper: Mapper,
                  progress: bool) -> tuple[Candidate, dict[str, Candidate], list[float],
                                           np.ndarray | None]:
    """The fit on all OOF rows and, with ``nested_cv``, one refit per held-out fold: (best,
    candidates, nested fold QWKs, held-out scores or None)."""
    best, cands = fit_weights_and_thresholds(preds, y, members, cfg, mapper)
    if not (cfg.nested_cv and len(fold_ids) >= 2):
        return best, cands, [], None
    nested: list[float] = []
    held = np.zeros(len(y), dtype=int)
    for k in tqdm(fold_ids, desc="nested ensemble CV", disable=not progress):
        tr, va = folds != k, folds == k
        c, _ = fit_weights_and_thresholds(preds[tr], y[tr], members, cfg, mapper)
        held[va] = cut(preds[va] @ c.weights, c.thresholds)
        nested.append(round(fast_qwk(y[va], held[va]), 6))
    return best, cands, nested, held


def fit_ensemble(table: pd.DataFrame, cfg: EnsembleSection | None = None,
                 progress: bool = False, texts: Sequence[str] | None = None,
                 stats: np.ndarray | None = None) -> EnsembleFit:
    """Fit weights + thresholds on a validated OOF table (see :func:`assemble_oof`).

    ``texts`` (row-aligned with ``table``; or their precomputed ``stats``, see
    :func:`aes_core.ensemble.stacker.essay_statistics`) enable the stacker: with
    ``ensemble.method`` auto the artifact applies the stacker iff its nested-CV QWK beats
    Nelder-Mead's. Without texts, auto is Nelder-Mead and ``stacker`` raises.
    """
    cfg = cfg or EnsembleSection()
    members = member_columns(table)
    preds = table[members].to_numpy(dtype=np.float64)
    y = table["score"].to_numpy(dtype=np.int64)
    folds = table["fold"].to_numpy(dtype=int)
    fold_ids = sorted(np.unique(folds).tolist())
    if texts is not None and len(texts) != len(table):
        raise ValueError(f"fit_ensemble: {len(texts)} texts for {len(table)} OOF rows")
    if stats is not None and len(stats) != len(table):
        raise ValueError(f"fit_ensemble: {len(stats)} statistics rows for {len(table)} OOF rows")
    want_stacker = cfg.method != NELDER_MEAD and bool(cfg.stacker_models)
    if cfg.method == STACKER and (texts is None and stats is None):
        raise ValueError("ensemble.method is 'stacker' but no essay texts were given: pass "
                         "texts= (row-aligned with the OOF table) or set method to auto")
    if cfg.method == STACKER and not cfg.stacker_models:
        raise ValueError("ensemble.method is 'stacker' but ensemble.stacker_models is empty")

    with process_map(cfg.n_jobs) as mapper:  # one pool for the fit and its nested refits
        best, cands, nested, held = _fit_and_nest(preds, y, folds, fold_ids, members, cfg,
                                                  mapper, progress)
    blended = preds @ best.weights
    final = cut(blended, best.thresholds)

    oof_qwk: dict[str, float] = {}
    rounded: dict[str, float] = {}
    fold_qwk: dict[str, list[float]] = {}
    for name, c in [*((mem, cands[mem]) for mem in members), (EQUAL, cands[EQUAL]),
                    ("optimized", cands["optimized"])]:
        b = preds @ c.weights
        oof_qwk[name] = round(c.qwk, 6)
        rounded[name] = round(fast_qwk(y, cut(b, DEFAULT_THRESHOLDS)), 6)
        fold_qwk[name] = [round(fast_qwk(y[folds == k], cut(b[folds == k], c.thresholds)), 6)
                          for k in fold_ids]
    oof_qwk[BLEND] = round(best.qwk, 6)
    rounded[BLEND] = round(fast_qwk(y, cut(blended, DEFAULT_THRESHOLDS)), 6)
    fold_qwk[BLEND] = [round(fast_qwk(y[folds == k], final[folds == k]), 6) for k in fold_ids]

    nested_qwk: dict[str, float] = {}
    if held is not None:
        oof_qwk["blend_nested"] = round(fast_qwk(y, held), 6)
        fold_qwk["blend_nested"] = nested
        nested_qwk = nested_member_qwk(preds, y, folds, members, cfg)
        nested_qwk[NELDER_MEAD] = oof_qwk["blend_nested"]

    stacker_fit = None
    if want_stacker and (texts is not None or stats is not None) and len(fold_ids) >= 3:
        from aes_core.ensemble.stacker import essay_statistics, fit_stacker

        if stats is None:
            stats = essay_statistics(texts)
        fits = {kind: fit_stacker(preds, stats, y, folds, members, kind, cfg)
                for kind in cfg.stacker_models}
        for kind, f in fits.items():
            nested_qwk[f"stacker_{kind}"] = round(f.nested_qwk, 6)
            oof_qwk[f"stacker_{kind}"] = round(f.oof_qwk, 6)
            fold_qwk[f"stacker_{kind}_nested"] = f.nested_fold_qwk
        kind = max(fits, key=lambda k: (fits[k].nested_qwk, -cfg.stacker_models.index(k)))
        stacker_fit = fits[kind]
        nested_qwk[STACKER] = nested_qwk[f"stacker_{kind}"]
    elif cfg.method == STACKER:
        raise ValueError(f"ensemble.method is 'stacker' but its nested CV needs >= 3 folds, "
                         f"found {fold_ids}")

    method = NELDER_MEAD
    if stacker_fit is not None:
        if cfg.method == STACKER:
            method = STACKER
        elif NELDER_MEAD in nested_qwk:
            gain = nested_qwk[STACKER] - nested_qwk[NELDER_MEAD]
            method = STACKER if gain > cfg.stacker_min_gain else NELDER_MEAD

    spread = np.asarray(fold_qwk[BLEND])
    notes = (f"selected: {best.name}; fitted on OOF only ({len(y)} essays, {len(fold_ids)} "
             f"folds); blend fold QWK mean {spread.mean():.4f} +/- {spread.std():.4f} "
             f"(min {spread.min():.4f}, max {spread.max():.4f})")
    if nested:
        notes += (f"; nested CV (weights+thresholds fit on K-1 folds) QWK "
                  f"{oof_qwk['blend_nested']:.4f} vs in-sample {best.qwk:.4f}")
    thresholds = best.thresholds
    out = table.copy()
    out["blended"] = blended
    out["pred_score"] = final
    if stacker_fit is not None:
        st = stacker_fit.stacker
        notes += (f"; method {method} (ensemble.method {cfg.method}): stacker {st.kind} nested "
                  f"QWK {nested_qwk[STACKER]:.4f} vs Nelder-Mead "
                  f"{nested_qwk.get(NELDER_MEAD, float('nan')):.4f}")
        if method == STACKER:  # the report shows the stacker's honest OOF, not a refit
            thresholds = st.thresholds
            out["blended"] = stacker_fit.oof
            out["pred_score"] = cut(stacker_fit.oof, st.thresholds)
            oof_qwk[BLEND] = round(stacker_fit.oof_qwk, 6)
            rounded[BLEND] = round(fast_qwk(y, cut(stacker_fit.oof, DEFAULT_THRESHOLDS)), 6)
            fold_qwk[BLEND] = [round(fast_qwk(y[folds == k], out["pred_score"].to_numpy()[
                folds == k]), 6) for k in fold_ids]
            oof_qwk["blend_nested"] = nested_qwk[STACKER]  # blend* = the applied method
            fold_qwk["blend_nested"] = stacker_fit.nested_fold_qwk
    elif want_stacker and cfg.method == "auto":
        notes += "; stacker not fitted (no essay texts or < 3 folds): Nelder-Mead"
    artifact = EnsembleArtifact(
        members=members, weights=[float(w) for w in best.weights],
        thresholds=thresholds, oof_qwk=oof_qwk, oof_qwk_rounded=rounded,
        fold_qwk=fold_qwk, n_folds=len(fold_ids), notes=notes, selected=best.name,
        method=method, nested_qwk=nested_qwk,
    )
    if method == STACKER:
        artifact.attach_stacker(stacker_fit.stacker)
    return EnsembleFit(artifact=artifact, table=out, candidates=cands, nested_fold_qwk=nested,
                       stacker=stacker_fit)


@dataclass
class BlendCheck:
    """Outcome of :func:`blend_beats_best_member` (the asset check wraps it)."""

    passed: bool
    metadata: dict[str, object]


def blend_beats_best_member(art: EnsembleArtifact, margin: float = 0.0) -> BlendCheck:
    """Does the applied blend beat the best single member on nested-CV QWK (+ ``margin``)?

    Both figures are fitted without the scored fold: the blend's weights/stacker and
    thresholds, and the member's own thresholds. An artifact without nested figures
    (``nested_cv`` off, or written before they existed) falls back to the in-sample OOF QWK of
    the Nelder-Mead blend, which cannot lose to a member — ``basis`` says which was used.
    """
    applied = art.method
    nested = art.nested_qwk
    if applied in nested and all(m in nested for m in art.members):
        q = {m: nested[m] for m in art.members}
        blend_q, basis = nested[applied], "nested_cv"
    else:
        q = {m: art.oof_qwk[m] for m in art.members}
        blend_q, basis = art.oof_qwk.get("optimized", art.oof_qwk[BLEND]), "in_sample"
    best = max(q, key=q.get)
    gain = blend_q - q[best]
    return BlendCheck(passed=bool(gain >= margin - 1e-9), metadata={
        "basis": basis, "method": applied, "blend_qwk": blend_q, "best_member": best,
        "best_member_qwk": q[best], "gain": gain, "required_gain": margin,
        "selected": art.selected, "final_blend_oof_qwk": art.oof_qwk.get(BLEND)})


def check_members(artifact: EnsembleArtifact, required: Iterable[str]) -> None:
    """Raise if a required member is absent from the artifact (serving-side sanity check)."""
    absent = [m for m in required if m not in artifact.members]
    if absent:
        raise OofError(f"ensemble lacks member(s) {absent}; it has {artifact.members}")
