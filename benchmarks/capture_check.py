"""Can an encoder's fold models be captured as CUDA graphs, and what do graphs buy per essay?

Builds ``--folds`` fold models of each head on an encoder of the given family at its default
(base) size with random weights — capture and speed do not depend on the weights — captures
them as one member group (``aes_core.serving.cuda_graphs.GroupGraphs``: batch sizes up to
``--max-batch``, lengths in steps of ``--bucket``), and times one essay of ``--tokens`` tokens
through the graphs and eagerly (bf16 autocast on CUDA). On a CPU nothing is captured: the
same padded forward runs (a smoke run).

    python benchmarks/capture_check.py --family mpnet --heads mean,attention,lstm

Prints the hardware, the transformers version, and per head: graphs captured and in how
long, max |graph - eager| logit, and the median latency of one essay both ways; writes
``capture_check_<family>.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from aes_core.hardware import hardware  # noqa: E402
from aes_core.models.regressor import EssayRegressor  # noqa: E402
from aes_core.models.spec import RegressorSpec  # noqa: E402
from aes_core.models.tiny import ENCODER_FAMILIES, random_encoder  # noqa: E402
from aes_core.serving.cuda_graphs import (  # noqa: E402
    GraphShapes,
    GroupGraphs,
    capture_hint,
    error_chain,
)
from aes_core.serving.torch_scorer import forward_context  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(ENCODER_FAMILIES), default="mpnet")
    ap.add_argument("--heads", default="mean,attention,lstm")
    ap.add_argument("--folds", type=int, default=5, help="fold models per head")
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--bucket", type=int, default=128, help="graph length step (tokens)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=300, help="tokens of the timed essay")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--small", action="store_true", help="a 4-layer, 32-wide encoder (tests)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return ap.parse_args(argv)


def median_ms(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def check_head(head: str, a: argparse.Namespace, device: torch.device) -> dict:
    cuda = device.type == "cuda"

    def context():  # as the scorer's graphs: bf16 autocast on CUDA, fp32 on a CPU
        return forward_context(device.type, torch.bfloat16 if cuda else None, graph=True)

    torch.manual_seed(0)
    models = [EssayRegressor(random_encoder(a.family, a.small),
                             RegressorSpec(head=head, backbone_name=a.family)).to(device).eval()
              for _ in range(a.folds)]
    forwards = [lambda i, k, _m=m: _m(i, k) for m in models]
    try:
        graphs = GroupGraphs(forwards, GraphShapes(a.max_batch, a.bucket, a.max_length),
                             device, 1, context)
    except Exception as e:  # noqa: BLE001 - the finding itself
        error = error_chain(e)
        return {"captured": False, "error": error, "hint": capture_hint(error) or None}
    vocab = models[0].encoder.config.vocab_size
    ids = torch.randint(5, vocab, (1, min(a.tokens, a.max_length)))
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def eager():
        with context():
            return torch.stack([f(ids.to(device), mask.to(device)).float().reshape(-1)
                                for f in forwards])

    diff = (graphs.run(ids.numpy(), mask.numpy()).float() - eager()).abs().max().item()
    for _ in range(3):  # warm up both paths
        graphs.run(ids.numpy(), mask.numpy())
        eager()
    return {"captured": cuda, "graphs": len(graphs),
            "capture_seconds": round(graphs.capture_seconds, 2),
            "max_abs_logit_diff": diff,
            "one_essay_ms_graphs": round(median_ms(
                lambda: graphs.run(ids.numpy(), mask.numpy()), a.repeats, sync), 2),
            "one_essay_ms_eager": round(median_ms(eager, a.repeats, sync), 2)}


def main(argv: list[str] | None = None) -> dict:
    import transformers

    a = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"benchmark": "capture_check", "family": a.family, "hardware": hardware(),
              "transformers": transformers.__version__, "folds": a.folds,
              "essay_tokens": a.tokens, "heads": {}}
    print(f"{a.family}: transformers {transformers.__version__}, {result['hardware']}")
    for head in a.heads.split(","):
        r = result["heads"][head] = check_head(head, a, device)
        print(f"  {head}: {json.dumps(r)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"capture_check_{a.family}.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
