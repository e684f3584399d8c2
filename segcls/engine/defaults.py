"""Command-line and config setup shared by ``tools/*.py``."""
import glob
import logging
import os

import torch
import yaml
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser as d2_argument_parser
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_segcls_config
from ..data.datasets import check_datasets, register_custom_datasets
from ..modeling.heads.config import validate_sem_seg_head

logger = logging.getLogger(__name__)

# What a finished or interrupted training run leaves in OUTPUT_DIR (checkpoints, their index and
# detectron2's event log): a new run into the folder would overwrite or mix with them.
RUN_FILES = ("*.pth", "last_checkpoint", "metrics.json")


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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an OUTPUT_DIR that holds another run: delete its checkpoints and metrics.json first",
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
    flags = [o for o in opts if isinstance(o, str) and o.startswith("--")]
    if flags:
        raise ValueError(
            f"{flags[0]} comes after the config overrides ({' '.join(map(str, opts))}): everything after the first "
            f"KEY VALUE pair is read as overrides; put flags such as {flags[0]} before them"
        )
    if config_file:
        check_base_files(config_file)
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


def check_base_files(config_file):
    """Raise ``FileNotFoundError`` naming the file and, for a ``_BASE_``, the file that refers
    to it, if ``config_file`` or a file of its ``_BASE_`` chain does not exist."""
    referrer = None
    while config_file:
        if not os.path.isfile(config_file):
            where = f" (the _BASE_ of '{referrer}')" if referrer else ""
            raise FileNotFoundError(f"config file '{config_file}'{where} does not exist")
        with open(config_file) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if base and not base.startswith(("/", "~")):
            base = os.path.join(os.path.dirname(config_file), base)
        referrer, config_file = config_file, base and os.path.expanduser(base)


def check_output_dir(output_dir, overwrite=False):
    """
    Refuse to start a new training run in ``output_dir`` if it holds another run's files
    (``RUN_FILES``): they would be overwritten or mixed with the new run's. With ``overwrite``
    the main process deletes them instead (logged).
    """
    found = sorted(p for pattern in RUN_FILES for p in glob.glob(os.path.join(output_dir, pattern)))
    if found and not overwrite:
        raise FileExistsError(
            f"OUTPUT_DIR '{output_dir}' holds another run ({', '.join(os.path.basename(p) for p in found[:5])}"
            f"{', ...' if len(found) > 5 else ''}): pass --resume to continue it, choose a new OUTPUT_DIR, or "
            "pass --overwrite to delete its checkpoints and metrics and start again"
        )
    if overwrite:  # every process gets here (same flag), so the barrier is matched
        if comm.is_main_process() and found:
            for path in found:
                os.remove(path)
            logger.warning(f"--overwrite: deleted {len(found)} files of the previous run in '{output_dir}'")
        comm.synchronize()


def saved_seed(output_dir):
    """The ``SEED`` in ``output_dir/config.yaml`` (the config a run saved), or None."""
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        seed = (yaml.safe_load(f) or {}).get("SEED")
    return seed if isinstance(seed, int) and seed >= 0 else None


def resolve_seed(cfg, resume):
    """Set a negative ``cfg.SEED`` to the seed of the run being resumed (``resume``, read from its
    saved config.yaml) or to a random seed shared by all processes, so that the saved
    config.yaml holds the seed actually used and ``--resume`` continues the same data order.
    Returns a message saying which (None if ``cfg.SEED >= 0``)."""
    if cfg.SEED >= 0:
        return None
    seed = saved_seed(cfg.OUTPUT_DIR) if resume else None
    cfg.SEED = comm.shared_random_seed() if seed is None else seed
    source = f"the seed of the resumed run ({cfg.OUTPUT_DIR}/config.yaml)" if seed is not None else "a random seed"
    return f"SEED < 0: using {source}: {cfg.SEED}"


def setup(args, add_config_fns=()):
    """Config from ``args`` (and a fork's ``add_config_fns``), frozen, with detectron2's
    ``default_setup`` (output dir, logging, seeding) and the optional deterministic mode.
    A new training run (neither ``--resume`` nor ``--eval-only``) refuses an OUTPUT_DIR that
    holds another run (:func:`check_output_dir`); ``SEED < 0`` is resolved first
    (:func:`resolve_seed`), so the saved config.yaml records the seed used."""
    cfg = load_config(args.config_file, args.opts, add_config_fns)
    if not (args.resume or args.eval_only):
        check_output_dir(cfg.OUTPUT_DIR, getattr(args, "overwrite", False))
    seed_message = resolve_seed(cfg, args.resume)
    cfg.freeze()
    register_custom_datasets(cfg)
    default_setup(cfg, args)
    # detectron2 sets up its own and fvcore's loggers; segcls's go to the same console and log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="segcls", abbrev_name="segcls")
    if seed_message:
        logger.info(seed_message)
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
    from .checkpoint import SegclsCheckpointer
    from .trainer import Trainer

    cfg = setup(args, add_config_fns)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = SegclsCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL, complete=True
        )
        if not (cfg.MODEL.WEIGHTS or (args.resume and checkpointer.has_checkpoint())):
            raise ValueError(
                "--eval-only needs trained weights: MODEL.WEIGHTS <checkpoint> (e.g. OUTPUT_DIR/model_final.pth), or "
                f"--resume with a checkpoint in OUTPUT_DIR ('{cfg.OUTPUT_DIR}' has none)"
            )
        check_datasets(cfg, cfg.DATASETS.TEST)
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
