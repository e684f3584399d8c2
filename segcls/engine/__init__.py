from .defaults import (
    default_argument_parser,
    enable_deterministic_mode,
    load_config,
    setup,
    train_net_cli,
    train_net_main,
)
from .ema import EMAHook, ModelEMA
from .launch import launch
from .predictor import SemSegPredictor, load_weights
from .trainer import IterationSeedHook, Trainer, write_metrics
