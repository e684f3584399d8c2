from .defaults import default_argument_parser, enable_deterministic_mode, load_config, setup
from .launch import launch
from .trainer import IterationSeedHook, Trainer, write_metrics
