"""Essay datasets: tokenization (truncated or windows), dynamic padding, length-sorted batches.

Tokenization, padding and sorting are ``aes_core.models.tokens``; a batch is a set of essays
(one target each) whose windows the collate function pads and pools (``window_weights``).
Training batches are global batches sharded over the DDP ranks (``ShardedBatchSampler``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
)

from aes_core.models.tokens import (
    WINDOW_WEIGHTS,
    TokenPlan,
    TokenSource,
    collate,
    length_sorted_batches,
    pad_id_of,
    tokenize_windows,
)


class WindowSource(Protocol):
    """Anything that turns texts into windows for one token plan (``TokenEncoder``,
    ``CachedEncoder``)."""

    plan: TokenPlan

    def windows(self, texts: Sequence[str]) -> list[list[list[int]]]: ...


class EssayDataset(Dataset):
    """The windows of each essay and an optional float target.

    ``max_length`` is an int (truncation at that many tokens, + ``add_newline_tokens``) or how
    the model reads essays: a ``TokenPlan``, ``BackboneSection`` or ``RegressorSpec``.
    ``encoder``: where the windows come from instead of ``tokenize_windows`` (same ids, e.g. a
    token cache shared by a step's workers); its plan must be this dataset's.
    """

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int | TokenSource,
                 targets: Sequence[float] | np.ndarray | None = None,
                 add_newline_tokens: bool = False, encoder: WindowSource | None = None):
        if targets is not None and len(targets) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        self.plan = (TokenPlan(max_length, add_newline_tokens) if isinstance(max_length, int)
                     else TokenPlan.of(max_length))
        if encoder is not None and encoder.plan != self.plan:
            raise ValueError(f"the encoder reads essays as {encoder.plan}, the dataset as "
                             f"{self.plan}")
        self.windows: list[list[list[int]]] = (
            encoder.windows(texts) if encoder is not None
            else tokenize_windows(tokenizer, texts, self.plan))
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        item = {"windows": self.windows[i]}
        if self.targets is not None:
            item["target"] = float(self.targets[i])
        return item

    @property
    def lengths(self) -> np.ndarray:
        """Tokens the model reads per essay (all its windows)."""
        return np.array([sum(len(w) for w in e) for e in self.windows], dtype=np.int64)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


class PadCollate:
    """Dynamic padding: pad every batch to its own longest window (picklable for DDP spawn)."""

    def __init__(self, pad_id: int, chunked: bool = False):
        self.pad_id = int(pad_id)
        self.chunked = chunked

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        out = collate([b["windows"] for b in batch], self.pad_id, self.chunked).tensors()
        if "target" in batch[0]:
            out["target"] = torch.tensor([b["target"] for b in batch], dtype=torch.float32)
        return out


class LengthSortedBatchSampler(Sampler[list[int]]):
    """Batches of similar length (longest first) so inference pads as little as possible."""

    def __init__(self, lengths: Sequence[int], batch_size: int):
        self.batches = length_sorted_batches(lengths, batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.batches:
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.batches)


def model_inputs(batch: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> list:
    """Positional arguments of ``EssayRegressor.forward`` from a collated batch."""
    args = [batch["input_ids"], batch["attention_mask"]]
    if WINDOW_WEIGHTS in batch:
        args.append(batch[WINDOW_WEIGHTS])
    return [a.to(device) for a in args]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks ((0, 1) outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class GlobalBatches(Protocol):
    """One epoch of training batches of any size, the same in every process that holds an
    equal copy (same seed, same generator state)."""

    def batches(self, batch_size: int) -> Iterator[list[int]]: ...


class ShuffledBatches:
    """Plain shuffled batches: torch's ``RandomSampler`` on ``generator``, cut as
    ``DataLoader(batch_size=..., shuffle=True, generator=generator)`` cuts it."""

    def __init__(self, n: int, generator: torch.Generator):
        self.sampler = RandomSampler(range(n), generator=generator)

    def batches(self, batch_size: int) -> Iterator[list[int]]:
        return iter(BatchSampler(self.sampler, batch_size, drop_last=False))


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled training batches of similar length: each epoch shuffles the essays, sorts
    groups of ``group_batches`` batches by length, cuts them into batches and shuffles the
    batch order, so padding shrinks while every batch stays a random draw of its group."""

    def __init__(self, lengths: Sequence[int], batch_size: int, group_batches: int,
                 seed: int):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.group_batches = batch_size, max(1, group_batches)
        self.seed, self.epoch = seed, 0

    def batches(self, batch_size: int) -> Iterator[list[int]]:
        """One epoch of batches of ``batch_size`` (groups of ``group_batches`` of them)."""
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        group = self.group_batches * batch_size
        batches = []
        for s in range(0, len(order), group):
            grp = order[s:s + group]
            grp = grp[np.argsort(-self.lengths[grp], kind="stable")]
            batches += [grp[i:i + batch_size].tolist() for i in range(0, len(grp), batch_size)]
        for i in rng.permutation(len(batches)):
            yield batches[i]

    def __iter__(self) -> Iterator[list[int]]:
        return self.batches(self.batch_size)

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class ShardedBatchSampler(Sampler[list[int]]):
    """``batch_size`` essays per rank, cut from global batches of ``batch_size * world``.

    Every rank draws the same global batches from its copy of ``source`` (same seed, same
    generator steps per epoch) and yields its own contiguous slice of each, so the ranks
    together train on exactly the batches one process with ``batch_size * world`` would;
    one process yields ``source``'s batches unchanged. Rank and world size are read at
    iteration time, so one loader serves every spawned DDP rank.

    A smaller global batch of ``m`` essays (the last one of an epoch) is split as evenly as
    possible: slices differ by at most one essay. DDP averages the ranks' mean losses, so an
    essay in a slice of ``k`` weighs ``1 / (world * k)`` instead of ``1 / m`` (equal only when
    ``world`` divides ``m``). A global batch of fewer essays than ranks is left out: every
    rank needs a batch.
    """

    def __init__(self, source: GlobalBatches, n: int, batch_size: int):
        self.source, self.n, self.batch_size = source, n, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = rank_and_world()
        for batch in self.source.batches(self.batch_size * world):
            if len(batch) >= world:
                yield batch[len(batch) * rank // world:len(batch) * (rank + 1) // world]

    def __len__(self) -> int:
        world = rank_and_world()[1]
        full, rest = divmod(self.n, self.batch_size * world)
        return full + int(rest >= world)


def train_loader(ds: EssayDataset, tokenizer, batch_size: int, seed: int,
                 num_workers: int = 0, group_batches: int = 0) -> DataLoader:
    """Shuffled training batches of ``batch_size`` essays per rank (the global batch is
    ``batch_size`` x ranks, see ``ShardedBatchSampler``); ``group_batches > 0`` groups them
    by length. One process gets the batches of a plain shuffling ``DataLoader``."""
    collate = PadCollate(pad_id_of(tokenizer), ds.plan.chunking)
    g: torch.Generator | None = None
    source: GlobalBatches
    if group_batches > 0:
        source = LengthGroupedBatchSampler(ds.lengths, batch_size, group_batches, seed)
    else:  # the loader draws its worker seed from g too, as a shuffling DataLoader does
        g = torch.Generator()
        g.manual_seed(seed)
        source = ShuffledBatches(len(ds), g)
    return DataLoader(ds, batch_sampler=ShardedBatchSampler(source, len(ds), batch_size),
                      generator=g, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0)


class EvalShardSampler(Sampler[int]):
    """This rank's validation essays: ``DistributedSampler(shuffle=False)`` (essay ``i`` on rank
    ``i % world``, the last shard padded with the first essays), built at iteration time so
    one loader serves every spawned rank; one process: every essay in order."""

    def __init__(self, n: int):
        self.n = n

    def _sampler(self) -> DistributedSampler:
        rank, world = rank_and_world()
        return DistributedSampler(range(self.n), num_replicas=world, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        return iter(self._sampler())

    def __len__(self) -> int:
        return len(self._sampler())


def eval_loader(ds: EssayDataset, tokenizer, batch_size: int, num_workers: int = 0,
                length_sorted: bool = True) -> DataLoader:
    """Validation/inference loader: length-sorted batches (one process), else this rank's
    shard in dataset order (``EvalShardSampler``; DDP gathers the shards)."""
    pad = PadCollate(pad_id_of(tokenizer), ds.plan.chunking)
    if length_sorted:
        return DataLoader(ds, batch_sampler=LengthSortedBatchSampler(ds.lengths, batch_size),
                          collate_fn=pad, num_workers=num_workers)
    return DataLoader(ds, batch_size=batch_size, sampler=EvalShardSampler(len(ds)),
                      collate_fn=pad, num_workers=num_workers)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, ds: EssayDataset, tokenizer, batch_size: int,
                   device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
                   progress: bool = False) -> np.ndarray:
    """Outputs for every essay of ``ds`` in dataset order (length-sorted batches inside):
    logits [N], or [N, D] for a model whose output is a vector per essay."""
    model.eval().to(device)
    sampler = LengthSortedBatchSampler(ds.lengths, batch_size)
    loader = DataLoader(ds, batch_sampler=sampler,
                        collate_fn=PadCollate(pad_id_of(tokenizer), ds.plan.chunking))
    out: np.ndarray | None = None
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="predict", leave=False)
    device_type = torch.device(device).type
    for idx, batch in zip(sampler, it, strict=True):
        with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits = model(*model_inputs(batch, device)).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(ds), *logits.shape[1:]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros(len(ds), dtype=np.float32)
