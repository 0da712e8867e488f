"""Essays per second of the served tokenizer paths, on real essays, in one process.

For each tokenizer folder: HF's ``tokenizer(...)`` call, ``TokenEncoder`` through the Rust
tokenizer (whole essays, and cut at ``chars_per_token`` before tokenizing, as served), and
the same with the word dict (``serving.tokenizer_word_cache``) on its first pass over the
essays and warm. Every path's ids are compared with HF's call. The Rust tokenizer uses one
thread unless ``--threads`` gives more (its pool size is fixed when a process first uses it).

    python benchmarks/tokenizer_speed.py --tokenizer minilm=<folder> --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aes_core.config import BackboneSection, ServingSection  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.models.tokens import TokenEncoder, TokenPlan, tokenize_windows  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = [SHARED / "aes2" / "train.csv.gz", SHARED / "aes2" / "test.csv.gz",
                SHARED / "persuade" / "unlabelled_essays.csv.gz"]


def best_rate(fn: Callable[[list[str]], Any], texts: list[str],
              repeats: int = 1) -> tuple[float, Any]:
    """Essays per second of the fastest of ``repeats`` passes, and the last pass's output."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best, out


def encoder_rates(tok, spec, texts: list[str], chars_per_token: float,
                  repeats: int = 1) -> dict[str, Any]:
    """essays/s of HF's call (once) and of each ``TokenEncoder`` path over ``texts``, and
    whether each path's ids equal the HF call's."""
    hf, reference = best_rate(lambda t: tokenize_windows(tok, t, spec), texts)
    rust, rust_cut = (TokenEncoder(tok, spec, c, word_cache=0) for c in (0.0, chars_per_token))
    words = TokenEncoder(tok, spec, chars_per_token)
    first_pass, got = best_rate(words.windows, texts)  # the first pass fills the word dict
    (rust_rate, rust_ids), (cut_rate, cut_ids) = (
        best_rate(e.windows, texts, repeats) for e in (rust, rust_cut))
    return {"hf_call": hf, "rust": rust_rate, "rust_cut": cut_rate,
            "words_cut_first_pass": first_pass,
            "words_cut": best_rate(words.windows, texts, repeats)[0] if words._words else None,
            "words_in_dict": len(words._words) if words._words else 0,
            "ids_equal_hf": {"rust": rust_ids == reference, "rust_cut": cut_ids == reference,
                             "words_cut": got == reference}}


def measure(name: str, folder: str, texts: list[str], plan: TokenPlan, chars_per_token: float,
            repeats: int) -> dict[str, Any]:
    from aes_core.models.backbone import load_tokenizer

    tok = load_tokenizer(folder)
    rates = encoder_rates(tok, plan, texts, chars_per_token, repeats)
    bb = BackboneSection()  # whole essays in windows, as chunked members read them
    windows = replace(plan, chunking=True, chunk_overlap=bb.chunk_overlap,
                      max_chunks=bb.max_chunks)
    rates["ids_equal_hf"]["words_windows"] = (
        TokenEncoder(tok, windows).windows(texts) == tokenize_windows(tok, texts, windows))
    row = {"tokenizer": name, **rates}
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", action="append", default=[],
                    help="name=folder (repeatable); default: the packaged MiniLM")
    ap.add_argument("--data", action="append", type=Path,
                    help="essay CSV(s) with full_text (default: AES2 train + test and the "
                         "unlabelled PERSUADE essays)")
    ap.add_argument("--max-essays", type=int, default=None, help="first N essays only")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--chars-per-token", type=float,
                    default=ServingSection().pretruncate_chars_per_token)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (the best counts)")
    ap.add_argument("--threads", type=int, default=1, help="Rust tokenizer threads")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.threads > 1:
        from aes_core.serving.torch_scorer import parallel_tokenizer

        parallel_tokenizer(a.threads)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if not a.tokenizer:
        from aes_core.models.backbone import packaged_minilm_path

        a.tokenizer = [f"minilm={packaged_minilm_path()}"]
    texts = [str(t) for p in (a.data or DEFAULT_DATA)
             for t in pd.read_csv(p, usecols=["full_text"])["full_text"]]
    texts = texts[:a.max_essays] if a.max_essays else texts
    plan = TokenPlan(a.max_length)
    rows = []
    for spec in a.tokenizer:
        name, _, folder = spec.partition("=")
        rows.append(measure(name, folder, texts, plan, a.chars_per_token, a.repeats))
        print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "tokenizer_speed", "hardware": hardware(), "essays": len(texts),
              "max_length": a.max_length, "chars_per_token": a.chars_per_token,
              "rust_threads": a.threads, "repeats": a.repeats, "unit": "essays/s",
              "rows": rows}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
