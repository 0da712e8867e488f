"""Plot the two-GPU measurements of ``results/multigpu.json``: the speedup of two GPUs over one
for every measured configuration (partitions per hour, DDP training tokens/s), with the targets
(no new measurement)::

    python benchmarks/multigpu_plot.py [--json benchmarks/results/multigpu.json] [--out PNG]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"partitions": 1.9, "ddp": 1.8}  # the speedups the multi-GPU issue asks for


def speedups(report: dict) -> list[tuple[str, str, float]]:
    """(panel, label, 2-GPU speedup) of every measured configuration in the report."""
    part, ddp = report["partitions"], report["ddp"]
    rows = [("partitions", "gpu-full: 20 MiniLM\nfold x head", part["speedup"])]
    if "ninth_stop_no_mps" in part:  # the same step before its workers shared GPUs via MPS
        rows.append(("partitions", "the same,\nMPS off", part["ninth_stop_no_mps"]["speedup"]))
    if "mpnet_four_partitions" in part:
        rows.append(("partitions", "4 mpnet folds", part["mpnet_four_partitions"]["speedup"]))
    configs = ddp.get("by_configuration") or [
        {"backbone": ddp.get("backbone", ""), "global_batch": ddp.get("global_batch", ""),
         "speedup": ddp["speedup"]}]
    rows += [("ddp", f"{c['backbone']}\nglobal batch {c['global_batch']}", c["speedup"])
             for c in configs]
    return rows


def per_hour(report: dict) -> dict[str, tuple[float, float]]:
    """Partitions per hour (1 GPU, 2 GPUs) of the headline and, where kept, without MPS."""
    part = report["partitions"]
    out = {"MPS on": (part["per_hour_1gpu"], part["per_hour_2gpu"])}
    if "ninth_stop_no_mps" in part:
        old = part["ninth_stop_no_mps"]
        out = {"MPS off": (old["per_hour_1gpu"], old["per_hour_2gpu"]), **out}
    return out if len(out) > 1 else {}


def _plot_rates(ax, rates: dict[str, tuple[float, float]]) -> None:
    width = 0.38
    for k, (name, colour) in enumerate((("1 GPU", "#90cdf4"), ("2 GPUs", "#2b6cb0"))):
        xs = [i + (k - 0.5) * width for i in range(len(rates))]
        bars = ax.bar(xs, [v[k] for v in rates.values()], width, label=name, color=colour)
        ax.bar_label(bars, labels=[f"{v[k]:.0f}" for v in rates.values()], fontsize=8)
    ax.set_xticks(range(len(rates)), list(rates))
    ax.set_title("gpu-full's 20 partitions\n(partitions per hour)")
    ax.legend(loc="upper left")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = speedups(report)
    titles = {"partitions": "partitions over GPUs\n(partitions per hour, 2 GPUs / 1 GPU)",
              "ddp": "DDP, one partition\n(training tokens/s, 2 GPUs / 1 GPU)"}
    rates = per_hour(report)
    fig, axes = plt.subplots(1, 3 if rates else 2, figsize=(16 if rates else 11, 4.2))
    if rates:
        _plot_rates(axes[-1], rates)
    for ax, key in zip(axes, ("partitions", "ddp"), strict=False):
        mine = [(label, x) for k, label, x in rows if k == key]
        bars = ax.bar([label for label, _ in mine], [x for _, x in mine], color="#2b6cb0")
        ax.bar_label(bars, labels=[f"{x:.2f}x" for _, x in mine])
        ax.axhline(TARGETS[key], ls="--", color="#c53030", label=f"target {TARGETS[key]}x")
        ax.axhline(2.0, ls=":", color="#718096", label="2x")
        ax.set_ylim(0, 2.2)
        ax.set_title(titles[key])
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(loc="lower right")
    fig.suptitle(report.get("gpu", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "multigpu.json"))
    ap.add_argument("--out", default=None, help="PNG (default: next to the JSON)")
    a = ap.parse_args(argv)
    src = Path(a.json)
    out = Path(a.out) if a.out else src.with_suffix(".png")
    plot(json.loads(src.read_text()), out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
