"""How long the GBDT member takes to score essays: one essay per call (a served single
request) and batches (a bulk request), on a saved member folder (``GbdtMember.save``, e.g. a
bundle's ``gbdt/``). Prints the hardware, p50 / p99 ms of one essay (after a warm-up) and ms
per essay in batches; ``--out`` also writes them as JSON::

    python benchmarks/gbdt_predict_latency.py --member var/storage/serving/gbdt \\
        --data DATA/aes2/test.csv.gz --essays 100 --batch 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aes_core.ensemble.gbdt import GbdtMember  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--member", required=True, help="a saved GBDT member folder")
    ap.add_argument("--data", required=True, help="essays (essay_id, full_text)")
    ap.add_argument("--essays", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=None, help="JSON file to write")
    a = ap.parse_args(argv)
    texts = pd.read_csv(a.data)["full_text"].astype(str).tolist()[:a.essays]
    t0 = time.perf_counter()
    member = GbdtMember.load(a.member)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    member.warm_up()
    warm_s = time.perf_counter() - t0
    single = []
    for t in texts:
        t1 = time.perf_counter()
        member.predict([t])
        single.append((time.perf_counter() - t1) * 1e3)
    t1 = time.perf_counter()
    for i in range(0, len(texts), a.batch):
        member.predict(texts[i:i + a.batch])
    batch_ms = (time.perf_counter() - t1) * 1e3 / len(texts)
    r = {"hardware": hardware(), "essays": len(texts), "folds": len(member.folds),
         "load_s": round(load_s, 2), "warm_up_s": round(warm_s, 3),
         "single_p50_ms": round(float(np.percentile(single, 50)), 2),
         "single_p99_ms": round(float(np.percentile(single, 99)), 2),
         "batch": a.batch, "batch_ms_per_essay": round(batch_ms, 2)}
    print(json.dumps(r, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
