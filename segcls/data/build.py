"""
Reproducible, resumable training data loading.

The training stream is a sequence of *sample positions* ``p = 0, 1, 2, ...``; position ``p`` is
the ``p % size``-th entry of a permutation drawn from ``(seed, epoch = p // size)``, and its
augmentations use ``numpy.random.default_rng([seed, p])``. Iteration ``i`` consumes positions
``[i * B, (i + 1) * B)`` (``B`` = SOLVER.IMS_PER_BATCH over all processes), rank ``r`` taking
those with ``p % world_size == r``. What a run sees is therefore a pure function of
(seed, iteration, rank, world size): independent of the number of data-loader workers, and a run
resumed at iteration ``i`` continues exactly where it stopped (detectron2's ``TrainingSampler``
restarts its stream instead).
"""
import itertools
import logging

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils import comm

from .dataset_mapper import build_mapper

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(torchdata.Sampler):
    """Infinite stream of ``(position, dataset_index)`` pairs for one rank (see the module docstring)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError(f"ResumableTrainingSampler needs a non-empty dataset, got size {size}")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start_position = 0

    def set_start_position(self, position: int):
        """Start the next iteration over this sampler at global sample position ``position``."""
        self.start_position = position

    def _order(self, epoch):
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self):
        first = self.start_position + (self.rank - self.start_position) % self.world_size
        epoch, order = None, None
        for position in itertools.count(first, self.world_size):
            if position // self.size != epoch:
                epoch = position // self.size
                order = self._order(epoch)
            yield position, int(order[position % self.size])


class PositionSeededDataset(torchdata.Dataset):
    """Maps ``(position, index)`` to ``mapper(records[index], rng=default_rng([seed, position]))``."""

    def __init__(self, records, mapper, seed):
        self.records = records
        self.mapper = mapper
        self.seed = seed

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        position, index = key
        return self.mapper(self.records[index], rng=np.random.default_rng([self.seed, position]))


class ResumableDataLoader:
    """
    An iterable of training batches (lists of mapped dicts) that starts lazily: the sampler's start
    is read when the first batch is requested, so :meth:`set_start_iter` after construction (on
    resume) takes effect without loading any sample twice.
    """

    def __init__(self, loader: torchdata.DataLoader, sampler: ResumableTrainingSampler, total_batch_size: int):
        self.loader = loader
        self.sampler = sampler
        self.total_batch_size = total_batch_size

    def set_start_iter(self, start_iter: int):
        self.sampler.set_start_position(start_iter * self.total_batch_size)

    def __iter__(self):
        # A generator: the DataLoader (and its workers) starts at the first next(), not here.
        yield from self.loader


def _trivial_batch_collator(batch):
    return batch


def get_train_records(cfg):
    records = []
    for name in cfg.DATASETS.TRAIN:
        records.extend(DatasetCatalog.get(name))
    if not records:
        raise ValueError(f"DATASETS.TRAIN={list(cfg.DATASETS.TRAIN)} holds no records")
    return records


def build_train_loader(cfg, mapper=None, seed=None):
    """
    Build the training loader for ``cfg.DATASETS.TRAIN`` with ``ResumableTrainingSampler``.

    ``seed`` defaults to ``cfg.SEED`` (or a random seed shared by all ranks when ``SEED < 0``).
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "ResumableTrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r}: segcls trains with 'ResumableTrainingSampler'"
        )
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} must be divisible by the number of processes ({world_size})")
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    records = get_train_records(cfg)
    mapper = build_mapper(cfg, is_train=True) if mapper is None else mapper
    sampler = ResumableTrainingSampler(len(records), seed, rank=comm.get_rank(), world_size=world_size)
    loader = torchdata.DataLoader(
        PositionSeededDataset(records, mapper, seed),
        batch_sampler=torchdata.BatchSampler(sampler, total // world_size, drop_last=True),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_trivial_batch_collator,
        # Own generator: creating the iterator must not draw from the global torch RNG.
        generator=torch.Generator().manual_seed(seed),
    )
    logger.info(f"Training on {len(records)} images from {list(cfg.DATASETS.TRAIN)}, data seed {seed}")
    return ResumableDataLoader(loader, sampler, total)


def build_test_loader(cfg, dataset_name, mapper=None):
    """detectron2's inference loader (each record once, batch 1) with the segcls test mapper."""
    return build_detection_test_loader(
        cfg, dataset_name, mapper=build_mapper(cfg, is_train=False) if mapper is None else mapper
    )

