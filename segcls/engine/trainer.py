"""
segcls's trainer: detectron2's ``DefaultTrainer`` with segcls's data loading, evaluators,
optimizer and schedule, CPU (gloo) data-parallel training and exact resumption.

Reproducibility: the training data stream is a function of (seed, sample position) (see
:mod:`segcls.data.build`), and :class:`IterationSeedHook` reseeds PyTorch's global RNG (dropout,
random init of lazily built parts) from (seed, iteration, rank) before every step. A run resumed
from the checkpoint of iteration ``i`` therefore computes exactly what the uninterrupted run
computed after iteration ``i`` (bitwise on CPU), without storing RNG states.

Nothing is lost on a stop: SIGINT/SIGTERM end the run after the current iteration, and any
exception in the training loop (a crash, a non-finite loss, an I/O error) ends it where it
happened; both save ``model_<iter>_interrupted.pth`` with the weights, optimizer, schedule and
hook states of the last completed iteration (its ``"interrupted"`` entry says why), which
``--resume`` continues from exactly. (An exception raised inside the optimizer's update itself
cannot be undone; the checkpoint then holds that partly updated step.)
"""
import contextlib
import json
import logging
import os
import signal
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import TensorboardXWriter
from detectron2.utils.logger import setup_logger

from .. import solver
from ..data import build_test_loader, build_train_loader
from ..data.datasets import check_datasets, register_custom_datasets
from ..evaluation import build_evaluator
from ..modeling.layers import cpu_sync_batch_norm
from ..utils.io import atomic_write, remove_stale_temp_files
from .checkpoint import SegclsCheckpointer
from .ema import CHECKPOINT_KEY as EMA_CHECKPOINT_KEY
from .ema import EMAHook, ModelEMA
from .visualization import PanelEvaluator, TrainingPanelsHook
from .wandb_writer import WandbWriter

logger = logging.getLogger(__name__)

# Where Trainer.test writes the evaluation results, relative to OUTPUT_DIR.
RESULTS_NAME = "results.json"  # OUTPUT_DIR/<eval_dir>/results.json: an evaluation's results
METRICS_FILE = os.path.join("eval", RESULTS_NAME)  # those of the raw weights (tools/run_seeds.py reads them)


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


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training after a completed iteration."""


@contextlib.contextmanager
def stop_on_signals(request_stop, signals=(signal.SIGINT, signal.SIGTERM)):
    """Within the block, the first SIGINT/SIGTERM calls ``request_stop(signum)`` (training then
    ends at the next iteration boundary); a second one raises ``KeyboardInterrupt`` at once.
    Handlers are only installed in the main thread (Python's rule) and restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        received.append(signum)
        request_stop(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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
    that wraps CPU models in ``DistributedDataParallel`` without ``device_ids`` (gloo), that
    resumes the data stream at the checkpoint's iteration, checkpoints atomically
    (:class:`SegclsCheckpointer`) and saves the last completed iteration when stopped (module
    docstring).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = with_resolved_seed(DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size()))
        register_custom_datasets(cfg)
        check_datasets(cfg, cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
        seed_all_rng(cfg.SEED)  # model initialisation depends on the seed only (DDP then syncs ranks)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.train_loader = self.build_train_loader(cfg)
        device_type = model.device.type
        device_ids = [comm.get_local_rank()] if device_type == "cuda" else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        self._trainer = build_train_loop(cfg, device_type, model, self.train_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SegclsCheckpointer(
            model, cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL, trainer=weakref.proxy(self)
        )
        self._stop_signal = None
        self._weights_iter = -1  # the iteration whose update the model's weights hold
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """detectron2's hooks, after :class:`IterationSeedHook` and (``MODEL.EMA.ENABLED``) the EMA
        update, plus the EMA's evaluation right after the raw weights' (``eval_ema/``) and the
        TensorBoard panels every ``VIS_PERIOD`` (:mod:`segcls.engine.visualization`)."""
        ret = [IterationSeedHook(self.cfg.SEED)]
        d2_hooks = super().build_hooks()
        # after the evaluation, before the writers (PeriodicWriter, main process only, comes last)
        after_eval = [i for i, h in enumerate(d2_hooks) if isinstance(h, hooks.EvalHook)][-1] + 1
        d2_hooks.insert(after_eval, TrainingPanelsHook.from_config(self.cfg))
        if self.cfg.MODEL.EMA.ENABLED:
            ema = ModelEMA(self.model, self.cfg.MODEL.EMA.DECAY, self.cfg.MODEL.EMA.WARMUP)
            self.checkpointer.add_checkpointable(EMA_CHECKPOINT_KEY, ema)
            ret.append(EMAHook(ema))
            d2_hooks.insert(after_eval, hooks.EvalHook(
                self.cfg.TEST.EVAL_PERIOD, lambda: {"ema": self.test(self.cfg, ema.module, eval_dir="eval_ema")}
            ))
        return ret + d2_hooks

    def build_writers(self):
        """detectron2's writers (console, ``metrics.json``, TensorBoard) and, with
        ``WANDB.ENABLED``, Weights & Biases, placed before TensorBoard's writer (which clears the
        images it writes)."""
        writers = super().build_writers()
        if self.cfg.WANDB.ENABLED:
            index = next((i for i, w in enumerate(writers) if isinstance(w, TensorboardXWriter)), len(writers))
            writers.insert(index, WandbWriter.from_config(self.cfg))
        return writers

    def train(self):
        """Train; on SIGINT/SIGTERM or an exception, save the last completed iteration and re-raise."""
        self._weights_iter = self.start_iter - 1
        with stop_on_signals(self._request_stop):
            try:
                return super().train()
            except BaseException as e:
                self._save_interrupted(e)
                raise

    def _request_stop(self, signum):
        self._stop_signal = signal.Signals(signum).name
        logger.warning(f"{self._stop_signal} received: stopping after iteration {self.iter + 1}")

    def before_step(self):
        if self._stop_signal is not None:
            raise TrainingInterrupted(f"{self._stop_signal} received")
        super().before_step()

    def run_step(self):
        super().run_step()
        self._weights_iter = self.iter

    def _save_interrupted(self, error):
        if self._weights_iter < self.start_iter or not comm.is_main_process():
            return  # nothing new since the loaded checkpoint
        self.iter = self._weights_iter  # state_dict() records the iteration the weights belong to
        reason = f"{type(error).__name__}: {error}"
        try:
            self.checkpointer.save(f"model_{self.iter:07d}_interrupted", iteration=self.iter, interrupted=reason)
        except Exception as save_error:
            logger.error(f"Could not save the interrupted run's checkpoint: {save_error}")
            return
        logger.error(
            f"Training stopped by {reason}; saved the state after {self.iter + 1} iterations to "
            f"{self.checkpointer.get_checkpoint_file()}. Continue with --resume."
        )

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
        if resume and comm.is_main_process() and remove_stale_temp_files(self.cfg.OUTPUT_DIR):
            logger.info(f"Removed the temporary files of an interrupted checkpoint save in {self.cfg.OUTPUT_DIR}")
        super().resume_or_load(resume=resume)
        self.train_loader.set_start_iter(self.start_iter)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model builder; on CPU, SyncBN layers become a cross-process BN that runs
        there (:func:`~segcls.modeling.layers.cpu_sync_batch_norm`, logged once)."""
        model = super().build_model(cfg)
        if model.device.type == "cpu":
            replaced = cpu_sync_batch_norm(model)
            if replaced:
                logger.info(f"MODEL.DEVICE cpu: {replaced} SyncBN layers run as NaiveSyncBatchNorm (all-reduce over gloo)")
        return model

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
    def test(cls, cfg, model, evaluators=None, eval_dir="eval"):
        """
        Evaluate on every dataset of ``cfg.DATASETS.TEST``; returns ``{dataset: {task: metrics}}``
        and, on the main process, writes it to ``OUTPUT_DIR/<eval_dir>/results.json`` (atomically;
        ``eval_dir`` is ``eval`` for the raw weights, ``eval_ema`` for their EMA). With
        ``VIS_PERIOD > 0`` the first images' panels also go to TensorBoard (``<eval_dir>/<dataset>/<i>``).
        """
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            if evaluators is None:
                evaluator = cls.build_evaluator(cfg, dataset_name, os.path.join(cfg.OUTPUT_DIR, eval_dir, dataset_name))
            else:
                evaluator = evaluators[idx]
            if cfg.VIS_PERIOD > 0 and cfg.SEGCLS.VIS_IMAGES > 0:
                evaluator = DatasetEvaluators([evaluator, PanelEvaluator(
                    dataset_name, f"{eval_dir}/{dataset_name}", cfg.SEGCLS.VIS_IMAGES, cfg.INPUT.FORMAT
                )])
            results[dataset_name] = inference_on_dataset(model, cls.build_test_loader(cfg, dataset_name), evaluator)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            write_metrics(results, os.path.join(cfg.OUTPUT_DIR, eval_dir, RESULTS_NAME))
        return results


def write_metrics(results, path):
    """Write evaluation results ({dataset: {task: {metric: value}}}) as strict JSON, atomically;
    NaN (e.g. the IoU of a class absent from the ground truth and the predictions) becomes null."""

    def plain(obj):
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if obj is None or isinstance(obj, str):
            return obj
        return None if not np.isfinite(obj) else float(obj)  # strict JSON: no NaN/Infinity literals

    with atomic_write(path, "w") as f:
        json.dump(plain(results), f, indent=2, allow_nan=False)
    logger.info(f"Evaluation results written to {path}")
