"""
The one schema of the head config nodes ``MODEL.DECODE_HEAD`` and ``MODEL.AUX_HEAD``.

Both nodes get the same keys, with the same defaults except where the auxiliary head's differ
(:data:`AUX_HEAD_DEFAULTS`), declared once:

- the keys every head reads (:func:`declare_common_head_keys`), here;
- each head's own keys, in that head's own file, with :func:`head_keys`: a function that declares
  the keys on a node (a subnode such as ``DANET``, or the head node itself), registered with the
  names of the heads that read them. ``add_head_config`` (called by ``segcls.config``) applies every
  registered declaration to both nodes; importing :mod:`segcls.modeling.heads` registers segcls's.

Keys that are set but read by nothing are errors: ``MODEL.SEM_SEG_HEAD.*`` besides ``NUM_CLASSES`` /
``IGNORE_VALUE`` (detectron2's, which segcls's heads do not read; :func:`validate_sem_seg_head`, run by
``segcls.engine.load_config`` and when the decode head is built), and a head's own keys set to a
non-default value while the node's ``NAME`` is a head that does not read them
(:func:`validate_head_node`, run when the node's head is built, i.e. on the final config: a script
may still change ``NAME`` after loading). Heads that registered no keys (e.g. a fork's wrapper head)
are not checked.
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from detectron2.config import CfgNode as CN

HEAD_NODES = ("DECODE_HEAD", "AUX_HEAD")

# Defaults of the auxiliary head that differ from the decode head's, and its extra keys.
AUX_HEAD_DEFAULTS = {
    # Training only: deep supervision on an intermediate feature (PSPNet-style).
    "ENABLED": False,
    "IN_FEATURES": ["res4"],
    "CHANNELS": 256,
    # Dropout before the auxiliary head's classifier, always a plain 1x1 conv.
    "DROPOUT": 0.1,
    "LOSS_WEIGHTS": [0.4],
}

# MODEL.SEM_SEG_HEAD keys that segcls reads; detectron2's others are dead in segcls.
SEM_SEG_HEAD_KEYS_READ = ("NUM_CLASSES", "IGNORE_VALUE")


def declare_common_head_keys(node):
    """The keys that every head node has (defaults of ``MODEL.DECODE_HEAD``)."""
    # Registered name (DECODE_HEAD_REGISTRY), backbone features it reads (the last one is "the"
    # input of single-input heads) and its width.
    node.NAME = "FCNHead"
    node.IN_FEATURES = ["res5"]
    node.CHANNELS = 512
    node.NORM = "BN"
    # The head's last block (segcls.modeling.heads.tail.HeadTail), where plug-ins attach:
    # LAST_CONV_KERNEL 3 = the usual last 3x3 conv-BN-ReLU; 1 = CAR's architecture change "A"
    # (CAR Sec. 4.2.1, Fig. 3B). REG_PROJECTION inserts before it a 1x1 conv with bias and no
    # norm/activation whose output ("reg_feature", REG_PROJECTION_CHANNELS channels, 0 =
    # min(C_in, 512)) is the feature that regularizers such as CAR act on.
    node.LAST_CONV_KERNEL = 3
    node.REG_PROJECTION = False
    node.REG_PROJECTION_CHANNELS = 0
    # Pixel losses of the head's prediction (PIXEL_LOSS_REGISTRY), summed with these weights.
    node.LOSSES = ["CrossEntropyLoss"]
    node.LOSS_WEIGHTS = [1.0]


class HeadKeys(NamedTuple):
    subnode: Optional[str]  # None: the keys are on the head node itself
    declare: Callable
    used_by: Tuple[str, ...]


_HEAD_KEYS: List[HeadKeys] = []


def head_keys(subnode: Optional[str], *, used_by):
    """
    Decorator registering ``declare(node)``, which adds one head's own keys with their defaults to
    ``node``: the subnode ``<HEAD_NODE>.<subnode>`` (created empty for it), or the head node itself
    when ``subnode`` is None. ``used_by``: names of the heads that read these keys.
    """

    def register(declare):
        _HEAD_KEYS[:] = [k for k in _HEAD_KEYS if (k.declare.__module__, k.declare.__qualname__) != (declare.__module__, declare.__qualname__)]
        _HEAD_KEYS.append(HeadKeys(subnode, declare, tuple(used_by)))
        return declare

    return register


def registered_head_keys() -> List[HeadKeys]:
    return list(_HEAD_KEYS)


def _declare(target, entry: HeadKeys):
    if entry.subnode is not None:
        target[entry.subnode] = CN()
        target = target[entry.subnode]
    entry.declare(target)


def add_head_config(cfg):
    """Add ``MODEL.DECODE_HEAD`` and ``MODEL.AUX_HEAD`` with the common and every registered head's keys."""
    for name in HEAD_NODES:
        node = cfg.MODEL[name] = CN()
        declare_common_head_keys(node)
        for entry in _HEAD_KEYS:
            _declare(node, entry)
        if name == "AUX_HEAD":
            for key, value in AUX_HEAD_DEFAULTS.items():
                node[key] = value
    return cfg


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _changed_keys(node, defaults, prefix) -> Dict[str, object]:
    """Dotted key -> value of the keys of ``node`` that differ from ``defaults``."""
    changed = {}
    for key, default in defaults.items():
        value = node.get(key, default)
        if isinstance(default, CN):
            changed.update(_changed_keys(value, default, f"{prefix}.{key}"))
        elif _plain(value) != _plain(default):
            changed[f"{prefix}.{key}"] = value
    return changed


def validate_sem_seg_head(cfg):
    """Reject a ``MODEL.SEM_SEG_HEAD`` key other than NUM_CLASSES / IGNORE_VALUE set to a value other
    than detectron2's default: segcls's heads do not read them."""
    from detectron2.config import get_cfg

    defaults = {k: v for k, v in get_cfg().MODEL.SEM_SEG_HEAD.items() if k not in SEM_SEG_HEAD_KEYS_READ}
    for key, value in _changed_keys(cfg.MODEL.SEM_SEG_HEAD, defaults, "MODEL.SEM_SEG_HEAD").items():
        raise ValueError(
            f"{key} is set (to {value!r}) but segcls does not read it: MODEL.SEM_SEG_HEAD only provides "
            f"{' and '.join(SEM_SEG_HEAD_KEYS_READ)}; configure the head with MODEL.DECODE_HEAD.* "
            f"(or MODEL.AUX_HEAD.*), e.g. MODEL.DECODE_HEAD.{key.rsplit('.', 1)[1]}"
        )


def validate_head_node(cfg, prefix: str, head_name: Optional[str] = None):
    """Reject a head-specific key of the node ``prefix`` (e.g. ``"MODEL.AUX_HEAD"``) that is set to a
    non-default value while the node's head does not read it. ``head_name``: the head that reads
    the node, when it is not ``<prefix>.NAME`` itself (a wrapper such as CSFRNHead passes its base head)."""
    node = cfg
    for part in prefix.split("."):
        node = node[part]
    name = head_name or node.NAME
    known = {used for entry in _HEAD_KEYS for used in entry.used_by}
    if name not in known:
        return
    reader = f"{prefix}.NAME is {name}" if head_name is None else f"the head of {prefix} is {name} (in {node.NAME})"
    for entry in _HEAD_KEYS:
        if name in entry.used_by:
            continue
        defaults = CN()
        _declare(defaults, entry)
        for key, value in _changed_keys(node, defaults, prefix).items():
            raise ValueError(
                f"{key} is set (to {value!r}) but {reader}, which does not read it (read by {', '.join(entry.used_by)})"
            )


def validate_head_config(cfg):
    """All of the checks above, for both head nodes."""
    validate_sem_seg_head(cfg)
    for name in HEAD_NODES:
        validate_head_node(cfg, f"MODEL.{name}")
