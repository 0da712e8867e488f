"""Wall time of masked-LM continued pretraining (``run_mlm``) on a profile's MLM settings.

Runs the whole call (blocks, perplexity before/after, training, saving) on the profile's first
backbone and texts (train + unlabelled, as the ``mlm_backbone`` asset gathers them)::

    python benchmarks/mlm_speed.py                    # cpu-small: block 128, 160 texts, 3 layers
    python benchmarks/mlm_speed.py --profile gpu-full --device cuda --amp bf16 --max-texts 4000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from aes_core.config import load_config  # noqa: E402
from aes_core.data import io  # noqa: E402
from aes_core.hardware import hardware  # noqa: E402
from aes_core.mlm import run_mlm  # noqa: E402
from aes_core.models.backbone import resolve_backbone_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-small")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    ap.add_argument("--max-texts", type=int, default=None, help="overrides mlm.max_texts")
    a = ap.parse_args(argv)
    cfg = load_config(a.profile)
    if a.max_texts is not None:
        cfg = cfg.model_copy(update={"mlm": cfg.mlm.model_copy(update={"max_texts": a.max_texts})})
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.amp]
    bb = cfg.backbones[0]
    texts = io.load_train(cfg.data.train_path)["full_text"].astype(str).tolist()
    if cfg.data.unlabelled_path:
        texts += io.load_unlabelled(cfg.data.unlabelled_path)["full_text"].astype(str).tolist()
    texts = list(dict.fromkeys(texts))
    print(json.dumps(hardware()), flush=True)
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            res = run_mlm(resolve_backbone_path(bb), Path(tmp) / "mlm", texts, cfg.mlm,
                          bb.add_newline_tokens, a.device, amp, progress=False,
                          num_layers=bb.num_layers)
            res["wall_seconds"] = round(time.perf_counter() - t0, 2)
            res["cpu_seconds"] = round(time.process_time() - c0, 2)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
