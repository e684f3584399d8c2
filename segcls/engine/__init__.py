from .defaults import (
    default_argument_parser,
    enable_deterministic_mode,
    load_config,
    setup,
    train_net_cli,
    train_net_main,
)
from .launch import launch
from .trainer import IterationSeedHook, Trainer, write_metrics
