"""benchmarks/tokenizer_speed.py on the sample essays: every path measured, every path's ids
compared with the HF call (and found equal)."""

from __future__ import annotations

import json

from aes_core.config import SAMPLE_DIR
from tests.bench_support import benchmark_module


def test_tokenizer_speed_measures_and_compares_every_path(tmp_path):
    bench = benchmark_module("tokenizer_speed")
    out = tmp_path / "speed.json"
    report = bench.main(["--data", str(SAMPLE_DIR / "test.csv.gz"), "--max-essays", "30",
                         "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["essays"] == 30 and report["hardware"]["cores"]
    (row,) = report["rows"]
    assert row["tokenizer"] == "minilm" and row["words_in_dict"] > 100
    for path in ("hf_call", "rust", "rust_cut", "words_cut_first_pass", "words_cut"):
        assert row[path] > 0, path
    assert row["ids_equal_hf"] == {"rust": True, "rust_cut": True, "words_cut": True,
                                   "words_windows": True}
