"""ResumableTrainingSampler: the stream is a function of (seed, position), ranks partition it, and
resuming at a position continues the same stream."""
import itertools

import numpy as np

from segcls.data.build import PositionSeededDataset, ResumableTrainingSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    stream = [i for _, i in _take(ResumableTrainingSampler(7, seed=3), 21)]
    epochs = [stream[i : i + 7] for i in range(0, 21, 7)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1]


def test_same_seed_same_stream_other_seed_other_stream():
    a = _take(ResumableTrainingSampler(10, seed=1), 30)
    assert a == _take(ResumableTrainingSampler(10, seed=1), 30)
    assert a != _take(ResumableTrainingSampler(10, seed=2), 30)


def test_ranks_partition_the_global_stream():
    full = _take(ResumableTrainingSampler(5, seed=0), 24)
    per_rank = [_take(ResumableTrainingSampler(5, seed=0, rank=r, world_size=3), 8) for r in range(3)]
    merged = sorted(itertools.chain(*per_rank))
    assert merged == sorted(full)
    assert all(p % 3 == r for r, items in enumerate(per_rank) for p, _ in items)


def test_resume_continues_the_stream():
    for world_size in (1, 2):
        for rank in range(world_size):
            full = _take(ResumableTrainingSampler(6, seed=4, rank=rank, world_size=world_size), 20)
            resumed = ResumableTrainingSampler(6, seed=4, rank=rank, world_size=world_size)
            resumed.set_start_position(10)
            tail = [x for x in full if x[0] >= 10]
            assert _take(resumed, len(tail)) == tail


def test_augmentation_rng_depends_on_position_only():
    draws = PositionSeededDataset([{"a": 0}, {"a": 1}], lambda d, rng: rng.random(), seed=9)
    assert draws[(5, 0)] == draws[(5, 1)] == np.random.default_rng([9, 5]).random()
    assert draws[(5, 0)] != draws[(6, 0)]
