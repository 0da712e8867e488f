"""Build the small real-essay sample bundled in data/sample/ (kept under 2 MB).

Usage: python tools/make_sample.py --source ../shared/data [--train 900 --test 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from aes_core.config import SAMPLE_DIR
from aes_core.data.normalize import normalize_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", default="../shared/data")
    ap.add_argument("--out", default=str(SAMPLE_DIR))
    ap.add_argument("--train", type=int, default=900)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--unlabelled", type=int, default=150)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    src, out = Path(a.source), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    read = lambda p: pd.read_csv(src / p, keep_default_na=False)  # noqa: E731
    train = read("aes2/train.csv.gz").groupby("score", group_keys=False).apply(
        lambda g: g.sample(frac=a.train / 5397, random_state=a.seed))
    test = read("aes2/test.csv.gz").sample(a.test, random_state=a.seed)
    labels = read("aes2/test_score.csv.gz").set_index("essay_id").loc[test.essay_id].reset_index()
    ref = read("persuade/persuade_reference.csv.gz")
    keys = set(pd.concat([train.full_text, test.full_text]).map(normalize_text))
    ref = ref[ref.full_text.map(normalize_text).isin(keys)]
    unl = read("persuade/unlabelled_essays.csv.gz").sample(a.unlabelled, random_state=a.seed)
    for name, df in {"train": train, "test": test, "test_score": labels,
                     "persuade_reference": ref, "unlabelled_essays": unl}.items():
        df.sample(frac=1.0, random_state=a.seed).to_csv(out / f"{name}.csv.gz", index=False)
        print(f"{name}: {len(df)} rows, {(out / f'{name}.csv.gz').stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
