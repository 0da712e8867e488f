"""Training batches: length grouping (every essay once per epoch, less padding, seeded) and
global batches sharded over DDP ranks (a fake rank and world size)."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from aes_core.models.tokens import pad_id_of
from aes_core.training import datamodule
from aes_core.training.datamodule import (
    EssayDataset,
    EvalShardSampler,
    LengthGroupedBatchSampler,
    PadCollate,
    ShardedBatchSampler,
    ShuffledBatches,
    train_loader,
)


def _padding(batches, lengths):
    return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in map(np.asarray, batches))


def test_grouped_batches_cover_each_essay_once_with_less_padding():
    lengths = np.random.default_rng(0).integers(50, 512, 1000)
    grouped = LengthGroupedBatchSampler(lengths, 32, 8, seed=1)
    epoch1, epoch2 = list(grouped), list(grouped)
    for epoch in (epoch1, epoch2):
        flat = sorted(i for b in epoch for i in b)
        assert flat == list(range(1000)) and len(epoch) == len(grouped)
    assert epoch1 != epoch2  # reshuffled every epoch
    assert list(LengthGroupedBatchSampler(lengths, 32, 8, seed=1)) == epoch1  # seeded
    order = np.random.default_rng(3).permutation(1000)
    plain = [order[i:i + 32] for i in range(0, 1000, 32)]
    assert _padding(epoch1, lengths) < 0.3 * _padding(plain, lengths)


def test_worker_sees_the_parents_gpu_by_its_physical_id():
    from aes_core.training.parallel import physical_gpu

    assert physical_gpu(0, {"CUDA_VISIBLE_DEVICES": "2,3"}) == "2"
    assert physical_gpu(1, {"CUDA_VISIBLE_DEVICES": "2,3"}) == "3"
    assert physical_gpu(1, {}) == "1"


# ----------------------------------------------------------------------------- global batches
def _texts(n: int) -> list[str]:
    lengths = np.random.default_rng(5).integers(2, 40, n)
    return [" ".join(["essay"] * int(k)) for k in lengths]


def _indices(loader) -> list[list[int]]:
    """One epoch of a loader over a dataset whose targets are the essays' indices."""
    return [b["target"].long().tolist() for b in loader]


def _todays_loader(ds, tok, batch_size: int, seed: int, group_batches: int):
    """The training loader before global batches (one device): the reference."""
    collate = PadCollate(pad_id_of(tok), ds.plan.chunking)
    if group_batches > 0:
        sampler = LengthGroupedBatchSampler(ds.lengths, batch_size, group_batches, seed)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collate)


@pytest.mark.parametrize("group_batches", [0, 3])
def test_one_process_keeps_todays_batches(tiny_backbone, group_batches):
    from aes_core.models.backbone import load_tokenizer

    tok = load_tokenizer(tiny_backbone)
    n = 45
    ds = EssayDataset(_texts(n), tok, 64, np.arange(n, dtype=np.float32))
    new, old = train_loader(ds, tok, 8, 7, group_batches=group_batches), _todays_loader(
        ds, tok, 8, 7, group_batches)
    assert len(new) == len(old) == 6
    epochs = [_indices(new) for _ in range(3)]
    assert epochs == [_indices(old) for _ in range(3)]
    assert epochs[0] != epochs[1]
    # the global RNG moves as before: a shuffling loader draws its worker seed from its own
    # generator, a length-grouped one from torch's global generator
    torch.manual_seed(0)
    _indices(train_loader(ds, tok, 8, 7, group_batches=group_batches))
    after_new = torch.rand(1)
    torch.manual_seed(0)
    _indices(_todays_loader(ds, tok, 8, 7, group_batches))
    assert torch.equal(after_new, torch.rand(1))


def _source(kind: str, n: int, seed: int):
    if kind == "grouped":
        return LengthGroupedBatchSampler(np.random.default_rng(2).integers(5, 500, n), 1, 4, seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return ShuffledBatches(n, g)


def _rank_epochs(monkeypatch, sampler: ShardedBatchSampler, rank: int, world: int,
                 epochs: int) -> list[list[list[int]]]:
    """What a spawned rank (an unpickled copy of the sampler) yields for ``epochs`` epochs."""
    copy = pickle.loads(pickle.dumps(sampler))
    monkeypatch.setattr(datamodule, "rank_and_world", lambda: (rank, world))
    out = [list(copy) for _ in range(epochs)]
    assert all(len(e) == len(copy) for e in out)
    return out


@pytest.mark.parametrize("kind", ["shuffle", "grouped"])
@pytest.mark.parametrize(("n", "batch_size", "world"), [(64, 4, 2), (45, 4, 2), (54, 3, 4)])
def test_ranks_split_the_one_device_global_batches(monkeypatch, kind, n, batch_size, world):
    seed, epochs = 11, 3
    single = _rank_epochs(monkeypatch, ShardedBatchSampler(_source(kind, n, seed), n,
                                                           batch_size * world), 0, 1, epochs)
    sampler = ShardedBatchSampler(_source(kind, n, seed), n, batch_size)
    ranks = [_rank_epochs(monkeypatch, sampler, r, world, epochs) for r in range(world)]
    for e in range(epochs):
        assert [len(r[e]) for r in ranks] == [len(single[e])] * world
        for s, glob in enumerate(single[e]):
            slices = [r[e][s] for r in ranks]
            assert sum(slices, []) == glob  # contiguous slices, in rank order
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
            assert len(slices[0]) == batch_size or s == len(single[e]) - 1 or kind == "grouped"
        flat = sorted(i for r in ranks for b in r[e] for i in b)
        assert flat == list(range(n))  # every essay once per epoch
    assert single[0] != single[1]  # epochs differ


def test_a_global_batch_smaller_than_the_world_is_left_out(monkeypatch):
    n, batch_size, world = 17, 4, 2  # the last global batch holds 1 essay: nothing for rank 1
    sampler = ShardedBatchSampler(_source("shuffle", n, 3), n, batch_size)
    ranks = [_rank_epochs(monkeypatch, sampler, r, world, 1)[0] for r in range(world)]
    assert [len(r) for r in ranks] == [2, 2]
    assert len({i for r in ranks for b in r for i in b}) == 16


@pytest.mark.parametrize(("n", "world"), [(9, 2), (10, 3), (5, 1)])
def test_validation_shards_gather_back_to_every_essay_once(monkeypatch, n, world):
    shards = []
    for rank in range(world):
        monkeypatch.setattr(datamodule, "rank_and_world", lambda r=rank: (r, world))
        shards.append(list(EvalShardSampler(n)))
    gathered = torch.tensor(shards).T.reshape(-1)[:n]  # as on_validation_epoch_end reads them
    assert gathered.tolist() == list(range(n))
