"""Plot the two-GPU measurements of ``results/multigpu.json``: partitions per hour and DDP
training tokens/s, one GPU against two, with the targets (no new measurement)::

    python benchmarks/multigpu_plot.py [--json benchmarks/results/multigpu.json] [--out PNG]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"partitions": 1.9, "ddp": 1.8}  # the speedups the multi-GPU issue asks for


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part, ddp = report["partitions"], report["ddp"]
    panels = [
        ("20 fold x head partitions\n(partitions per hour)", "partitions",
         part["per_hour_1gpu"], part["per_hour_2gpu"]),
        ("DDP, one partition\n(training tokens/s, millions)", "ddp",
         ddp["tokens_per_s_1gpu"] / 1e6, ddp["tokens_per_s_2gpu"] / 1e6),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, key, one, two) in zip(axes, panels, strict=True):
        ax.bar(["1 GPU", "2 GPUs"], [one, two], color=["#a0aec0", "#2b6cb0"])
        ax.axhline(one * TARGETS[key], ls="--", color="#c53030",
                   label=f"target {TARGETS[key]}x")
        ax.axhline(one * 2, ls=":", color="#718096", label="2x")
        ax.text(1, two, f"{two / one:.2f}x", ha="center", va="bottom")
        ax.set_title(title)
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
