"""CUDA graphs for small requests: every fold model of a member group replayed as one graph.

One essay does not keep a GPU busy: a MiniLM forward on one essay launches a few hundred small
kernels and takes ~3.5 ms on an H200 while the GPU idles between launches, and the ensemble
runs 20 such forwards one after another. :class:`GroupGraphs` captures the forward of every
fold model of a group once per (batch size, length bucket) when the scorer loads; a request of
at most ``max_batch`` essays is padded up to the next captured shape (extra rows repeat the
first essay, extra columns are masked padding) and replayed with one launch. With
``streams`` > 1 the fold models are captured on that many CUDA streams, so the replay runs
them side by side (a BiLSTM head steps through the tokens one at a time and leaves most of
the GPU idle).

Padding: the encoder and the mean, attention and layer heads mask padded positions; the
BiLSTM head reads zeros there, so its logit moves slightly with the padded length, as it does
for any essay batched with a longer one.

On a CPU nothing is captured: ``run`` executes the same forward on the same padded buffers
(this is what the tests check).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

Forward = Callable[..., object]  # (input_ids, attention_mask) -> logits tensor [B]


@dataclass(frozen=True)
class GraphShapes:
    """The shapes captured: batch sizes 1, 2, 4, … up to ``max_batch`` and sequence lengths
    in steps of ``bucket`` up to ``max_length``."""

    max_batch: int
    bucket: int
    max_length: int

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.bucket < 1 or self.max_length < 1:
            raise ValueError(f"graph shapes need positive sizes, got {self}")

    def batch_sizes(self) -> list[int]:
        sizes, b = [], 1
        while b < self.max_batch:
            sizes.append(b)
            b *= 2
        return sizes + [self.max_batch]

    def lengths(self) -> list[int]:
        steps = range(self.bucket, self.max_length + self.bucket, self.bucket)
        return sorted({min(n, self.max_length) for n in steps})

    def shape_for(self, n: int, seq: int) -> tuple[int, int] | None:
        """The smallest captured (batch, length) that holds ``n`` essays of ``seq`` tokens,
        or None when the request is larger than every captured shape."""
        if not 1 <= n <= self.max_batch or seq > self.max_length:
            return None
        b = next(s for s in self.batch_sizes() if s >= n)
        return b, next(x for x in self.lengths() if x >= seq)


def forward_on_streams(forwards: Sequence[Forward], ids, mask, streams: Sequence = ()):
    """[K, B] float32 logits of every forward, run on ``streams`` in turn (side by side on the
    GPU) or, without streams, one after another on the current stream. Every side stream
    first waits for the current one (its inputs are ready, and memory it frees is not reused
    before the current stream's last reads); the current stream waits for all of them."""
    import torch

    if not streams:
        return torch.stack([f(ids, mask).float().reshape(-1) for f in forwards])
    # the current device's stream: under a capture that is the capture stream. Asking for
    # the inputs' device instead broke captures on a GPU other than 0 (measured on 2 H200s).
    main = torch.cuda.current_stream()
    for s in streams:
        s.wait_stream(main)
    outs = []
    try:
        for k, f in enumerate(forwards):
            with torch.cuda.stream(streams[k % len(streams)]):
                outs.append(f(ids, mask).float().reshape(-1))
    finally:  # joined even when a forward raised, so a capture ends on that error, not its own
        for s in streams:
            main.wait_stream(s)
    return torch.stack(outs)


def error_chain(error: BaseException, depth: int = 3) -> str:
    """An error's first line, then those of the errors it was raised while handling. A
    capture that breaks inside a forward raises again from the capture's end ("capturing
    stream has unjoined work"), which alone hides the operation that broke it."""
    lines, seen, e = [], set(), error
    while e is not None and id(e) not in seen and len(lines) < depth:
        seen.add(id(e))
        lines.append(f"{type(e).__name__}: {e}".splitlines()[0])
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return lines[0] + "".join(f" (raised while handling {x})" for x in lines[1:])


# causes of failed captures seen on a GPU, by a line of their error: what to do about them
CAPTURE_HINTS = {
    "Cannot copy between CPU and CUDA tensors during CUDA graph capture": (
        "a forward copies a CPU tensor to the GPU; MPNet's does in transformers < 5.18 "
        "(it builds its relative-position buckets on the CPU), and this project requires "
        "transformers >= 5.20: check `pip show transformers`"),
}


def capture_hint(error: str) -> str:
    """What to do about a failed capture whose cause is known (see ``CAPTURE_HINTS``), or ""."""
    return next((hint for line, hint in CAPTURE_HINTS.items() if line in error), "")


@dataclass
class _Shape:
    ids: object                  # static input buffers on the device
    mask: object
    out: object = None           # [K, B] logits the graph writes (CUDA)
    graph: object = None         # torch.cuda.CUDAGraph (CUDA)


class GroupGraphs:
    """The captured forwards of one member group (see the module docstring).

    ``forwards``: one callable per fold model, ``(input_ids, attention_mask) -> [B]`` logits;
    ``context``: what every forward runs in (inference mode, autocast without its weight
    cache: a cached cast made outside a capture would be freed under the graph).
    """

    def __init__(self, forwards: Sequence[Forward], shapes: GraphShapes, device, pad_id: int,
                 context: Callable[[], AbstractContextManager], streams: int = 1,
                 warmup: int = 2):
        import torch

        self.forwards = list(forwards)
        self.shapes = shapes
        self.device = torch.device(device)
        self.pad_id = pad_id
        self.context = context
        self.warmup = warmup
        self.capture = self.device.type == "cuda"
        self.streams = ([torch.cuda.Stream(self.device) for _ in range(streams)]
                        if self.capture and streams > 1 else [])
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self._warmup_stream = torch.cuda.Stream(self.device) if self.capture else None
        self.replays = 0
        self._lock = threading.Lock()  # one replay at a time: the buffers are shared
        t0 = time.perf_counter()
        self._shapes = {(b, n): self._capture(b, n)
                        for b in shapes.batch_sizes() for n in shapes.lengths()}
        self.capture_seconds = time.perf_counter() - t0

    def __len__(self) -> int:
        return len(self._shapes)

    def forward(self, ids, mask):
        """[K, B] float32 logits of every fold model (on side streams when asked)."""
        return forward_on_streams(self.forwards, ids, mask, self.streams)

    def _capture(self, batch: int, length: int) -> _Shape:
        import torch

        ids = torch.full((batch, length), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.ones((batch, length), dtype=torch.long, device=self.device)
        if length > 1:
            mask[:, -1] = 0  # warm up the masked attention that padded requests take
        shape = _Shape(ids, mask)
        if not self.capture:
            return shape
        side = self._warmup_stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), self.context():
            for _ in range(self.warmup):
                self.forward(ids, mask)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), self.context():
            shape.out = self.forward(ids, mask)
        shape.graph = graph
        return shape

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray):
        """[K, n] logits on the device of a padded batch of ``n`` essays, or None when no
        captured shape holds it (the caller then runs the models eagerly)."""
        import torch

        n, seq = input_ids.shape
        fit = self.shapes.shape_for(n, seq)
        if fit is None:
            return None
        b, length = fit
        ids = np.full((b, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((b, length), dtype=np.int64)
        ids[:n, :seq], mask[:n, :seq] = input_ids, attention_mask
        ids[n:], mask[n:] = ids[0], mask[0]  # unused rows: copies of a real essay
        shape = self._shapes[fit]
        with self._lock, torch.inference_mode():
            shape.ids.copy_(torch.from_numpy(ids))
            shape.mask.copy_(torch.from_numpy(mask))
            if shape.graph is not None:
                shape.graph.replay()
                out = shape.out
            else:
                with self.context():
                    out = self.forward(shape.ids, shape.mask)
            self.replays += 1
            return out[:, :n].clone()
