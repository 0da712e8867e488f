"""When each partition of a training step ran, and on which worker: a table, a summary, a plot.

A step that trains many partitions over worker slots spends time outside them too: before
the first partition starts (worker start, the shared tokenization) and after the last one
ends; and a GPU runs fewer partitions at once once its first ones finish. The summary puts
numbers on those parts; the plot shows them, one row per worker, one bar per partition split
into its phases (``FoldHeadCheckpoint.phase_seconds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from aes_core.contracts import FoldHeadCheckpoint

PHASES = ("setup", "stage1", "stage2", "predict_save")
PHASE_COLOURS = {"setup": "#bbbbbb", "stage1": "#4c72b0", "stage2": "#55a868",
                 "predict_save": "#dd8452"}


def timeline_rows(results: Sequence[tuple[str, FoldHeadCheckpoint]],
                  step_start: float) -> pd.DataFrame:
    """One row per partition trained in this step (reused ones ran earlier: left out):
    partition, worker, start_s and end_s from the step's start, and each phase's seconds."""
    rows = []
    for pk, r in results:
        if r.reused or not r.started_at:
            continue
        rows.append({"partition": pk, "worker": r.worker or r.device,
                     "start_s": round(r.started_at - step_start, 2),
                     "end_s": round(r.finished_at - step_start, 2),
                     **{p: r.phase_seconds.get(p, 0.0) for p in PHASES}})
    cols = ["partition", "worker", "start_s", "end_s", *PHASES]
    return pd.DataFrame(rows, columns=cols).sort_values(["worker", "start_s"],
                                                        ignore_index=True)


def timeline_summary(rows: pd.DataFrame, step_seconds: float) -> dict[str, float]:
    """Where the step's time went: ``before_first_s`` (step start to the first partition's
    start), ``after_last_s`` (last partition's end to step end), ``partition_s_mean``, and
    ``worker_busy_share`` (partition seconds over workers x step seconds)."""
    if rows.empty:
        return {}
    workers = rows["worker"].nunique()
    busy = float((rows["end_s"] - rows["start_s"]).sum())
    out = {"before_first_s": float(rows["start_s"].min()),
           "after_last_s": round(step_seconds - float(rows["end_s"].max()), 2),
           "partition_s_mean": round(float((rows["end_s"] - rows["start_s"]).mean()), 2),
           "workers": float(workers),
           "worker_busy_share": round(busy / max(workers * step_seconds, 1e-9), 3)}
    for p in PHASES:
        out[f"{p}_s_mean"] = round(float(rows[p].mean()), 2)
    return out


def plot_timeline(rows: pd.DataFrame, step_seconds: float, path: Path,
                  title: str | None = None) -> Path:
    """One row per worker, one bar per partition, coloured by phase."""
    from aes_core.report import plt, save_figure

    workers = sorted(rows["worker"].unique())
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(workers) + 1.4))
    for y, w in enumerate(workers):
        for _, r in rows[rows["worker"] == w].iterrows():
            left = r["start_s"]
            for p in PHASES:
                if r[p] > 0:
                    ax.barh(y, r[p], left=left, color=PHASE_COLOURS[p], edgecolor="white",
                            linewidth=0.4)
                    left += r[p]
            ax.text(r["start_s"] + 0.5, y, r["partition"], va="center", fontsize=6)
    ax.axvline(step_seconds, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, step_seconds * 1.01)
    ax.set_yticks(range(len(workers)), workers, fontsize=6)
    ax.set_xlabel("seconds from the step's start (dashed: step end)")
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=PHASE_COLOURS[p]) for p in PHASES]
    ax.legend(handles, PHASES, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path, title)
