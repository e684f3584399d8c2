"""
segcls's trainer: detectron2's ``DefaultTrainer`` with segcls's data loading, evaluators,
optimizer and schedule, CPU (gloo) data-parallel training and exact resumption.

Reproducibility: the training data stream is a function of (seed, sample position) (see
:mod:`segcls.data.build`), and :class:`IterationSeedHook` reseeds PyTorch's global RNG (dropout,
random init of lazily built parts) from (seed, iteration, rank) before every step. A run resumed
from the checkpoint of iteration ``i`` therefore computes exactly what the uninterrupted run
computed after iteration ``i`` (bitwise on CPU), without storing RNG states.
"""
import json
import logging
import os
import weakref
from collections import OrderedDict

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import inference_on_dataset
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .. import solver
from ..data import build_test_loader, build_train_loader
from ..evaluation import build_evaluator
from ..utils.io import atomic_write

logger = logging.getLogger(__name__)


def with_resolved_seed(cfg):
    """``cfg`` if ``cfg.SEED >= 0``, else a copy whose SEED is a random seed shared by all processes
    (logged, so that the run can be repeated)."""
    if cfg.SEED >= 0:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = comm.shared_random_seed()
    cfg.freeze()
    logger.info(f"SEED < 0: using the random seed {cfg.SEED}")
    return cfg


class IterationSeedHook(HookBase):
    """Before each step, seed PyTorch's RNG with a value derived from (seed, iteration, rank)."""

    def __init__(self, seed):
        self.seed = seed

    def before_step(self):
        key = np.random.SeedSequence([self.seed, self.trainer.iter, comm.get_rank()])
        torch.manual_seed(int(key.generate_state(1, dtype=np.uint64)[0] >> 1))


def build_train_loop(cfg, device_type, model, data_loader, optimizer) -> SimpleTrainer:
    """
    The step loop. segcls's meta-architectures apply ``SOLVER.AMP`` autocast themselves
    (:mod:`segcls.modeling.precision`), so bfloat16 (CPU or CUDA) needs no scaler:
    ``SimpleTrainer``. float16 needs gradient scaling: detectron2's ``AMPTrainer`` with
    ``torch.amp.GradScaler("cuda")`` (CUDA only; its own fp16 autocast just wraps the model's).
    """
    if cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "float16":
        if device_type != "cuda":
            raise ValueError(
                f"SOLVER.AMP.PRECISION='float16' trains with a gradient scaler on CUDA only, but MODEL.DEVICE is "
                f"{cfg.MODEL.DEVICE!r}: use SOLVER.AMP.PRECISION 'bfloat16' there"
            )
        return AMPTrainer(model, data_loader, optimizer, grad_scaler=torch.amp.GradScaler("cuda"))
    return SimpleTrainer(model, data_loader, optimizer)


class Trainer(DefaultTrainer):
    """
    ``DefaultTrainer`` whose data loader, evaluators, optimizer and LR schedule come from segcls,
    that wraps CPU models in ``DistributedDataParallel`` without ``device_ids`` (gloo), and that
    resumes the data stream at the checkpoint's iteration.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = with_resolved_seed(DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size()))
        seed_all_rng(cfg.SEED)  # model initialisation depends on the seed only (DDP then syncs ranks)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.train_loader = self.build_train_loader(cfg)
        device_type = model.device.type
        device_ids = [comm.get_local_rank()] if device_type == "cuda" else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        self._trainer = build_train_loop(cfg, device_type, model, self.train_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        return [IterationSeedHook(self.cfg.SEED)] + super().build_hooks()

    def state_dict(self):
        # detectron2 v0.6's DefaultTrainer checkpoints only the iteration and hook states, not the
        # optimizer (momentum buffers): resumed runs silently diverged. Later detectron2 versions
        # add this same entry.
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        self.train_loader.set_start_iter(self.start_iter)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "eval", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return solver.build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return solver.build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """
        Evaluate on every dataset of ``cfg.DATASETS.TEST``; returns ``{dataset: {task: metrics}}``
        and, on the main process, writes it to ``OUTPUT_DIR/eval/metrics.json`` (atomically).
        """
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            evaluator = cls.build_evaluator(cfg, dataset_name) if evaluators is None else evaluators[idx]
            results[dataset_name] = inference_on_dataset(model, cls.build_test_loader(cfg, dataset_name), evaluator)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            write_metrics(results, os.path.join(cfg.OUTPUT_DIR, "eval", "metrics.json"))
        return results


def write_metrics(results, path):
    """Write evaluation results ({dataset: {task: {metric: value}}}) as JSON, atomically."""

    def plain(obj):
        if isinstance(obj, (dict, OrderedDict)):
            return {k: plain(v) for k, v in obj.items()}
        return None if isinstance(obj, float) and np.isnan(obj) else float(obj)

    with atomic_write(path, "w") as f:
        json.dump(plain(results), f, indent=2)
    logger.info(f"Evaluation results written to {path}")
