"""Length-grouped training batches: every essay once per epoch, less padding, seeded."""

import numpy as np

from aes_core.training.datamodule import LengthGroupedBatchSampler


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
