"""Nested-CV QWK against test QWK of the ensemble configurations in ``quality.json``.

Plots the ablation rows that carry a ``short`` label (each scored on ``aes2/test`` once, chosen
and fitted on OOF only) with the issue's targets as lines, and prints them as a table::

    python benchmarks/quality_configs_plot.py --quality benchmarks/results/quality.json \
        --out benchmarks/results/quality_configurations.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def labelled_rows(quality: dict[str, Any]) -> list[dict[str, Any]]:
    """Ablation rows with a short label and both a test and a nested-CV QWK, by nested CV."""
    rows = [r for r in quality.get("ablation", []) if r.get("short")
            and r.get("test_qwk") is not None and r.get("nested_cv_qwk") is not None]
    if not rows:
        raise ValueError("no ablation row has 'short', 'test_qwk' and 'nested_cv_qwk'")
    return sorted(rows, key=lambda r: r["nested_cv_qwk"])


def plot(rows: list[dict[str, Any]], out: Path, target: float, gbdt_test: float | None,
         gain: float) -> Path:
    """Rows (``labelled_rows``) numbered in their order, named beside the scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, key) = plt.subplots(1, 2, figsize=(12, 5.5), width_ratios=(3, 2))
    xs = [r["nested_cv_qwk"] for r in rows]
    ys = [r["test_qwk"] for r in rows]
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):  # numbers, named on the right
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=8)
    key.axis("off")
    key.text(0, 1, "\n".join(f"{i:2d}  {r['short']}  ({r['nested_cv_qwk']:.4f} / "
                             f"{r['test_qwk']:.4f})" for i, r in enumerate(rows, start=1)),
             va="top", family="monospace", fontsize=8, transform=key.transAxes)
    key.set_title("configuration (nested CV / test)", fontsize=9, loc="left")
    ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target: test QWK {target}")
    if gbdt_test is not None:
        ax.axhline(gbdt_test + gain, color="tab:orange", ls=":", lw=1,
                   label=f"target: GBDT alone + {gain} ({gbdt_test + gain:.3f})")
    ax.set_xlabel("nested-CV QWK (OOF essays; how configurations are chosen)")
    ax.set_ylabel("test QWK (aes2/test, scored once)")
    ax.set_title("Ensemble configurations: chosen on OOF, scored on test once")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", type=Path, default=Path("benchmarks/results/quality.json"))
    ap.add_argument("--out", type=Path,
                    default=Path("benchmarks/results/quality_configurations.png"))
    ap.add_argument("--target", type=float, default=0.83, help="test QWK target")
    ap.add_argument("--gain", type=float, default=0.02, help="target gain over the GBDT alone")
    a = ap.parse_args(argv)
    quality = json.loads(a.quality.read_text())
    rows = labelled_rows(quality)
    gbdt = quality.get("test_qwk", {}).get("gbdt_alone")
    print(f"{'configuration':46s} {'nested CV':>9s} {'test':>7s}")
    for r in rows:
        print(f"{r['short']:46s} {r['nested_cv_qwk']:9.4f} {r['test_qwk']:7.4f}")
    print(f"wrote {plot(rows, a.out, a.target, gbdt, a.gain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
