"""Scoring report of the ensemble on OOF predictions: tables, PNG plots, a Markdown summary.

Plots use matplotlib's Agg backend (no display). Inputs are the OOF table from
:func:`aes_core.ensemble.blend.fit_ensemble` (``score``, ``blended``, ``pred_score``, optional
``prompt_name``, member columns, optional ``flags`` from the essay flagger) and the
:class:`EnsembleArtifact`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.config import FlagsSection  # noqa: E402
from aes_core.ensemble.artifact import EnsembleArtifact  # noqa: E402
from aes_core.ensemble.thresholds import fast_qwk  # noqa: E402
from aes_core.metrics import SCORES, score_confusion  # noqa: E402

PLOTS = ("confusion_matrix", "score_distribution", "calibration", "member_qwk")
IMPORTANCE_PLOT = "gbdt_importance"  # added when the GBDT member's importances are given
IMPORTANCE_TOP_N = 25


@dataclass
class ScoringReport:
    """Everything the scoring_report asset shows: tables, plot files, Markdown."""

    per_prompt: pd.DataFrame
    confusion: pd.DataFrame
    member_table: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""
    overall_qwk: float = float("nan")
    flag_table: pd.DataFrame | None = None    # per flag, when the table has ``flags``
    qwk_after_flags: float | None = None      # QWK of the scores after the flag policy


def per_prompt_qwk(df: pd.DataFrame, pred_col: str = "pred_score") -> pd.DataFrame:
    """QWK, essay count and mean true/predicted score per prompt (plus an ``ALL`` row)."""
    prompt = df["prompt_name"] if "prompt_name" in df.columns else pd.Series("ALL", df.index)
    rows = []
    for name, g in df.groupby(prompt, sort=True):
        rows.append({"prompt_name": name, "essays": len(g),
                     "qwk": fast_qwk(g["score"], g[pred_col]),
                     "mean_score": g["score"].mean(), "mean_pred": g[pred_col].mean()})
    rows.append({"prompt_name": "ALL", "essays": len(df),
                 "qwk": fast_qwk(df["score"], df[pred_col]),
                 "mean_score": df["score"].mean(), "mean_pred": df[pred_col].mean()})
    return pd.DataFrame(rows)


def member_table(artifact: EnsembleArtifact) -> pd.DataFrame:
    """One row per member and blend: weight, OOF QWK (thresholded, rounded), fold spread."""
    names = [*artifact.members, "equal_blend", "blend"]
    if "blend_nested" in artifact.oof_qwk:
        names.append("blend_nested")
    w = dict(zip(artifact.members, artifact.weights, strict=True))
    rows = []
    for n in names:
        fq = np.asarray(artifact.fold_qwk.get(n, []), dtype=float)
        rows.append({"name": n, "weight": w.get(n, np.nan),
                     "oof_qwk": artifact.oof_qwk.get(n, np.nan),
                     "nested_qwk": artifact.nested_qwk.get(
                         "nelder_mead" if n == "optimized" else n, np.nan),
                     "oof_qwk_rounded": artifact.oof_qwk_rounded.get(n, np.nan),
                     "fold_mean": fq.mean() if fq.size else np.nan,
                     "fold_std": fq.std() if fq.size else np.nan,
                     "fold_min": fq.min() if fq.size else np.nan})
    return pd.DataFrame(rows)


def save_figure(fig, path: Path, title: str | None = None, dpi: int = 90) -> Path:
    """Lay out, write and close a figure (``title``: a small line above the panels)."""
    if title:
        fig.suptitle(title[:120], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_confusion(conf: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(conf.shape[0]):
        for j in range(conf.shape[1]):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.6 else "black", fontsize=8)
    ax.set_xticks(range(6), SCORES)
    ax.set_yticks(range(6), SCORES)
    ax.set_xlabel("predicted score")
    ax.set_ylabel("true score")
    ax.set_title("OOF confusion matrix (row-normalised colour)")
    return save_figure(fig, path)


def plot_distribution(df: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    true = df["score"].value_counts().reindex(SCORES, fill_value=0)
    pred = df["pred_score"].value_counts().reindex(SCORES, fill_value=0)
    x = np.arange(len(SCORES))
    ax.bar(x - 0.2, true.to_numpy(), width=0.4, label="true")
    ax.bar(x + 0.2, pred.to_numpy(), width=0.4, label="predicted")
    ax.set_xticks(x, SCORES)
    ax.set_xlabel("score")
    ax.set_ylabel("essays")
    ax.set_title("Score distribution (OOF)")
    ax.legend()
    return save_figure(fig, path)


def plot_calibration(df: pd.DataFrame, thresholds: list[float], path: Path,
                     bins: int = 12) -> Path:
    """Mean true score per quantile bin of the blended prediction, against the diagonal."""
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    b = df["blended"].to_numpy()
    q = np.unique(np.quantile(b, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(q, b, side="right") - 1, 0, max(len(q) - 2, 0))
    g = pd.DataFrame({"b": b, "y": df["score"].to_numpy(), "i": idx}).groupby("i")
    agg = g.agg(b=("b", "mean"), y=("y", "mean"), n=("y", "size"))
    ax.plot([1, 6], [1, 6], color="grey", lw=1, ls="--", label="ideal")
    ax.plot(agg["b"], agg["y"], marker="o", label="mean true score per bin")
    for t in thresholds:
        ax.axvline(t, color="tab:red", lw=0.6, alpha=0.5)
    ax.set_xlim(1, 6)
    ax.set_ylim(1, 6)
    ax.set_xlabel("blended prediction (red: thresholds)")
    ax.set_ylabel("true score")
    ax.set_title("Calibration (OOF)")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


def plot_member_qwk(table: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.0, 0.35 * len(table) + 1.4))
    y = np.arange(len(table))
    ax.barh(y, table["oof_qwk"], xerr=table["fold_std"].fillna(0), color="tab:blue", alpha=0.8)
    ax.set_yticks(y, table["name"])
    lo = float(np.nanmin(table["oof_qwk"])) if len(table) else 0.0
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.invert_yaxis()
    ax.set_xlabel("OOF QWK with fitted thresholds (bars: fold std)")
    ax.set_title("Members and blends")
    return save_figure(fig, path)


def _group(feature: str) -> str:
    return feature.split(":", 1)[0] + " n-grams" if ":" in feature else "handcrafted"


def _label(feature: str) -> str:
    """``char:ing `` -> ``char 'ing '`` so spaces inside n-grams stay visible."""
    if ":" not in feature:
        return feature
    kind, term = feature.split(":", 1)
    return f"{kind} {term!r}"


def plot_importance(importance: pd.DataFrame, path: Path,
                    top_n: int = IMPORTANCE_TOP_N) -> Path:
    """Top-N features of the GBDT member by LightGBM gain (mean over folds), with each
    group's (word / char n-grams, handcrafted) share of the total gain in the title."""
    missing = [c for c in ("feature", "gain") if c not in importance.columns]
    if missing:
        raise ValueError(f"importance table lacks column(s) {missing}; "
                         f"found {list(importance.columns)}")
    imp = importance.sort_values("gain", ascending=False, kind="stable")
    total = max(float(imp["gain"].sum()), 1e-12)
    groups = imp.groupby(imp["feature"].map(_group))["gain"].sum() / total
    top = imp.head(top_n)
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(top) + 1.6))
    y = np.arange(len(top))
    colours = {"handcrafted": "tab:green", "word n-grams": "tab:blue",
               "char n-grams": "tab:orange"}
    ax.barh(y, top["gain"] / total, color=[colours.get(_group(f), "tab:grey")
                                           for f in top["feature"]])
    ax.set_yticks(y, [_label(f) for f in top["feature"]], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of total gain (green: handcrafted, blue: word, orange: char)")
    ax.set_title("GBDT member: top features by gain\n" + ", ".join(
        f"{g} {v:.0%}" for g, v in groups.sort_values(ascending=False).items()), fontsize=9)
    return save_figure(fig, path)


def flag_table(table: pd.DataFrame, pred_col: str = "pred_score") -> pd.DataFrame:
    """Per flag name (every known one, then ``any gaming flag``): essays carrying it, their
    share, mean true and mean predicted score (before the flag policy)."""
    from aes_core.flags import FLAG_NAMES, GAMING_FLAGS
    from aes_core.flags.flagger import FLAG_SEP

    names = [set(f.split(FLAG_SEP)) - {""} for f in table["flags"].fillna("")]
    groups = {f: np.array([f in n for n in names], dtype=bool) for f in FLAG_NAMES}
    groups["any gaming flag"] = np.array([bool(n & set(GAMING_FLAGS)) for n in names],
                                         dtype=bool)
    rows = []
    for name, mask in groups.items():
        sel = table[mask]
        rows.append({"flag": name, "essays": int(mask.sum()),
                     "share": float(mask.mean()) if len(mask) else 0.0,
                     "mean_true_score": float(sel["score"].mean()) if len(sel) else None,
                     "mean_pred_score": float(sel[pred_col].mean()) if len(sel) else None})
    return pd.DataFrame(rows)


def _flag_lines(table: pd.DataFrame, flags: pd.DataFrame, policy: FlagsSection | None,
                overall: float) -> tuple[list[str], float | None]:
    """The summary's flag section and the QWK after the flag policy (None without one)."""
    from aes_core.flags import apply_flag_policy

    after = None
    lines = ["", "## Flags (gaming / off-topic) on these essays",
             flags.to_markdown(index=False, floatfmt=".3f")]
    if policy is not None:
        capped = apply_flag_policy(table["pred_score"].to_numpy(), table["flags"].tolist(),
                                   policy)
        after = fast_qwk(table["score"], capped.astype(int))
        cap = policy.cap_score_when_flagged
        if cap is None:
            lines += ["", "The flag policy caps no score (`flags.cap_score_when_flagged` is "
                      "null)."]
        else:
            lines += ["", f"With the flag policy (score capped at {cap} for "
                      f"{', '.join(policy.cap_flags)}): OOF QWK **{after:.4f}** (without: "
                      f"{overall:.4f})."]
    return lines, after


def build_report(table: pd.DataFrame, artifact: EnsembleArtifact,
                 out_dir: str | Path, flag_policy: FlagsSection | None = None,
                 importance: pd.DataFrame | None = None) -> ScoringReport:
    """Write the PNG plots into ``out_dir`` and return tables + Markdown summary.

    With a ``flags`` column the summary counts the essays per flag; with ``flag_policy`` it
    also gives the QWK after the policy's score cap. ``importance`` (the GBDT member's
    ``feature, gain`` table, :func:`aes_core.ensemble.gbdt.load_importance`) adds the
    ``gbdt_importance`` plot."""
    for c in ("score", "blended", "pred_score"):
        if c not in table.columns:
            raise ValueError(f"report table lacks column {c!r}; found {list(table.columns)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = per_prompt_qwk(table)
    conf = score_confusion(table["score"], table["pred_score"])
    conf_df = pd.DataFrame(conf, index=pd.Index(SCORES, name="true"),
                           columns=pd.Index(SCORES, name="pred"))
    members = member_table(artifact)
    plots = {
        "confusion_matrix": plot_confusion(conf, out / "confusion_matrix.png"),
        "score_distribution": plot_distribution(table, out / "score_distribution.png"),
        "calibration": plot_calibration(table, artifact.thresholds, out / "calibration.png"),
        "member_qwk": plot_member_qwk(members, out / "member_qwk.png"),
    }
    if importance is not None and len(importance):
        plots[IMPORTANCE_PLOT] = plot_importance(importance, out / f"{IMPORTANCE_PLOT}.png")
    overall = fast_qwk(table["score"], table["pred_score"])
    best_name = max(artifact.members, key=lambda m: artifact.oof_qwk.get(m, -1))
    lines = [
        "# Scoring report (out-of-fold)",
        "",
        f"**Blend OOF QWK {overall:.4f}** (selected: `{artifact.selected or 'optimized'}`) vs "
        f"best single member `{best_name}` {artifact.oof_qwk.get(best_name, float('nan')):.4f} "
        f"and equal blend {artifact.oof_qwk.get('equal_blend', float('nan')):.4f}.",
    ]
    if "blend_nested" in artifact.oof_qwk:
        lines.append(f"Nested-CV estimate (weights and thresholds fitted without the scored "
                     f"fold): **{artifact.oof_qwk['blend_nested']:.4f}**.")
    if artifact.nested_qwk:
        nq = artifact.nested_qwk
        figures = ", ".join(f"{k} {nq[k]:.4f}" for k in ("nelder_mead", "stacker") if k in nq)
        lines.append(f"Blend method: **{artifact.method}** (nested-CV QWK: {figures}).")
    lines += [
        f"Thresholds: {', '.join(f'{t:.3f}' for t in artifact.thresholds)}. "
        f"{len(table)} essays, {artifact.n_folds} folds.",
        "",
        "## Members and blends",
        members.to_markdown(index=False, floatfmt=".4f"),
        "",
        "## Per prompt",
        prompts.to_markdown(index=False, floatfmt=".3f"),
        "",
        "## Confusion matrix (rows: true, columns: predicted)",
        conf_df.to_markdown(),
    ]
    flags, after = None, None
    if "flags" in table.columns:
        flags = flag_table(table)
        more, after = _flag_lines(table, flags, flag_policy, overall)
        lines += more
    lines += ["", f"_{artifact.notes}_"]
    md = "\n".join(lines)
    (out / "summary.md").write_text(md)
    prompts.to_csv(out / "per_prompt_qwk.csv", index=False)
    return ScoringReport(per_prompt=prompts, confusion=conf_df, member_table=members,
                         plots=plots, markdown=md, overall_qwk=overall, flag_table=flags,
                         qwk_after_flags=after)
