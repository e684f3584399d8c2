"""
Exponential moving average (EMA) of the model weights (``MODEL.EMA``), as d2go's ``MODEL_EMA``
and timm's ``ModelEmaV2`` keep it: after every optimizer step

    ema <- decay_t * ema + (1 - decay_t) * w

for every floating-point entry of the model's ``state_dict`` (parameters and buffers such as BN
running statistics); integer entries (``num_batches_tracked``) are copied. ``decay_t = DECAY``,
or with ``MODEL.EMA.WARMUP`` TensorFlow's ``ExponentialMovingAverage(num_updates=t)`` schedule
``min(DECAY, (1 + t) / (10 + t))`` (t = number of updates so far), which keeps the average from
being dominated by the random initialisation in short runs.

The average lives in a copy of the model (:attr:`ModelEMA.module`, eval mode, no gradients), so it
is evaluated like any model. It is checkpointed with the raw weights under the checkpoint key
``"model_ema"`` (d2go's key) and restored on ``--resume``, so a resumed run continues the average
bit-exactly.
"""
import copy
import logging

import torch
from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "model_ema"


def unwrap_model(model):
    """The module inside a ``DistributedDataParallel`` wrapper (else ``model``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModelEMA:
    """The EMA of ``model``'s weights (see the module docstring); ``state_dict``/``load_state_dict``
    make it a checkpointable."""

    def __init__(self, model, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL.EMA.DECAY must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.initialized = False

    def decay_at(self, num_updates: int) -> float:
        """``decay_t`` of the update after ``num_updates`` updates."""
        return min(self.decay, (1.0 + num_updates) / (10.0 + num_updates)) if self.warmup else self.decay

    @torch.no_grad()
    def reset(self, model):
        """Start the average at ``model``'s current weights."""
        self.module.load_state_dict(unwrap_model(model).state_dict())
        self.num_updates = 0
        self.initialized = True

    @torch.no_grad()
    def update(self, model):
        """One EMA step towards ``model``'s current weights."""
        decay = self.decay_at(self.num_updates)
        source = unwrap_model(model).state_dict()
        resized = {}
        for key, ema in self.module.state_dict().items():
            value = source[key]
            if ema.shape != value.shape:  # a lazily allocated buffer (CAR's running centers): take it
                resized[key] = value
            elif ema.is_floating_point():
                ema.mul_(decay).add_(value.to(ema.dtype), alpha=1.0 - decay)
            else:
                ema.copy_(value)
        if resized:
            self.module.load_state_dict(resized, strict=False)
        self.num_updates += 1

    def state_dict(self):
        return {"model": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state_dict):
        self.module.load_state_dict(state_dict["model"])
        self.num_updates = state_dict["num_updates"]
        self.initialized = True


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` after every step; at the start of training, unless a resumed
    checkpoint restored it, the average starts at the (loaded) weights."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def before_train(self):
        if not self.ema.initialized:
            logger.info("EMA of the weights starts at the model's current weights")
            self.ema.reset(self.trainer.model)

    def after_step(self):
        self.ema.update(self.trainer.model)


def load_ema_weights(model, checkpoint_path):
    """Load the EMA weights stored in a segcls checkpoint (key ``"model_ema"``) into ``model``;
    raises ``KeyError`` naming the file if it holds none."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise KeyError(
            f"checkpoint '{checkpoint_path}' holds no EMA weights (key '{CHECKPOINT_KEY}'): it was not trained "
            "with MODEL.EMA.ENABLED True"
        )
    model.load_state_dict(checkpoint[CHECKPOINT_KEY]["model"])
    return model
