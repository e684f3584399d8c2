"""Command-line and config setup shared by ``tools/*.py``."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser as d2_argument_parser
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_segcls_config
from ..modeling.heads.config import validate_sem_seg_head


def default_argument_parser(epilog=None):
    """detectron2's standard flags (``--config-file --eval-only --resume --num-gpus
    --num-machines --machine-rank --dist-url`` and trailing ``KEY VALUE`` overrides) plus
    ``--dist-backend``. ``--num-gpus N`` is the number of processes per machine: GPUs with
    nccl, CPU processes with gloo."""
    parser = d2_argument_parser(epilog)
    parser.add_argument(
        "--dist-backend",
        default="auto",
        choices=["auto", "nccl", "gloo"],
        help="process-group backend: nccl (GPUs), gloo (CPU processes), auto = nccl if CUDA is available",
    )
    return parser


def load_config(config_file="", opts=(), add_config_fns=()):
    """
    A frozen-able segcls config: detectron2 defaults + ``add_segcls_config`` + each of
    ``add_config_fns`` (a fork's own ``add_*_config(cfg)``) + ``config_file`` + ``opts``.
    An unknown key raises ``KeyError`` naming the key and the file (or the command line); a key
    that nothing reads (a ``MODEL.SEM_SEG_HEAD`` key other than NUM_CLASSES / IGNORE_VALUE, or a
    head's own key while the node selects another head) raises ``ValueError`` naming it
    (:func:`segcls.modeling.heads.config.validate_head_config`).
    """
    cfg = get_cfg()
    add_segcls_config(cfg)
    for add_config in add_config_fns:
        add_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file '{config_file}' does not exist")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise KeyError(f"{config_file}: {e.args[0]} (not a detectron2/segcls config key)") from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:  # yacs asserts "Non-existent key" in merge_from_list
        raise KeyError(f"command-line override: {e.args[0]} (not a detectron2/segcls config key)") from None
    validate_sem_seg_head(cfg)
    return cfg


def setup(args, add_config_fns=()):
    """Config from ``args`` (and a fork's ``add_config_fns``), frozen, with detectron2's
    ``default_setup`` (output dir, logging, seeding) and the optional deterministic mode."""
    cfg = load_config(args.config_file, args.opts, add_config_fns)
    cfg.freeze()
    default_setup(cfg, args)
    # detectron2 sets up its own and fvcore's loggers; segcls's go to the same console and log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="segcls", abbrev_name="segcls")
    if cfg.SEGCLS.DETERMINISTIC:
        enable_deterministic_mode()
    return cfg


def enable_deterministic_mode():
    """PyTorch's deterministic algorithms (warn where none exists, e.g. bilinear-upsampling
    backward on CUDA) and deterministic cuDNN."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def train_net_main(args, add_config_fns=()):
    """``tools/train_net.py``'s work in one process: train (resuming with ``--resume``), or with
    ``--eval-only`` evaluate ``MODEL.WEIGHTS``. A fork passes its ``add_*_config`` functions."""
    from detectron2.checkpoint import DetectionCheckpointer

    from .trainer import Trainer

    cfg = setup(args, add_config_fns)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.MODEL.EMA.ENABLED:  # the EMA weights stored alongside, evaluated to OUTPUT_DIR/eval_ema/
            from .ema import load_ema_weights

            path = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.MODEL.WEIGHTS
            results["ema"] = Trainer.test(cfg, load_ema_weights(Trainer.build_model(cfg), path), eval_dir="eval_ema")
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def train_net_cli(main_func=train_net_main):
    """Parse the standard flags and run ``main_func(args)`` in one or several processes."""
    from .launch import launch

    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    return launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=args.dist_backend,
    )
