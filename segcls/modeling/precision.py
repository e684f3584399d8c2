"""
The fast path of segcls's meta-architectures, in one place: mixed precision (autocast, bfloat16 or
float16, on CPU and CUDA), channels-last memory format and ``torch.compile``
(config: ``SOLVER.AMP.*``, ``TEST.AMP.ENABLED``, ``MODEL.CHANNELS_LAST``, ``MODEL.COMPILE.*``),
plus :func:`float32`, the one way numerically sensitive code stays in float32 under autocast.

The meta-architectures apply :class:`FastPath` themselves, so ``model(batched_inputs)`` is the
fast path wherever it is called (trainer, evaluator, predictor, benchmarks). Pre-processing
(normalisation, padding), the merging of sliding windows / test-time augmentation and the
returned scores stay float32.
"""
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Callable, Dict

import torch
from detectron2.config import CfgNode as CN

logger = logging.getLogger(__name__)

PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_HALF = (torch.bfloat16, torch.float16)


def cpu_bf16_support() -> str:
    """What this CPU offers for bfloat16 (AMX / AVX-512 BF16 tiles through oneDNN), in words."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    found = [name for name in ("amx_bf16", "avx512_bf16", "avx512f") if name in flags]
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    return f"CPU bf16 support: {', '.join(found) or 'none'} ({'native bf16 matmul' if native else 'bf16 is emulated: expect no speed-up'})"


def add_fast_path_config(cfg):
    """The fast-path keys (called from :func:`segcls.config.add_segcls_config`)."""
    # Mixed-precision training (detectron2's key, extended): the meta-architecture runs its forward
    # and losses under torch.autocast(<model device type>, dtype=PRECISION); float32 islands are
    # marked with segcls.modeling.precision.float32. "bfloat16" (CPU and CUDA, no gradient scaler)
    # or "float16" (the trainer adds torch.amp.GradScaler). detectron2's AMPTrainer (CUDA fp16
    # only) is not used.
    cfg.SOLVER.AMP.ENABLED = False
    cfg.SOLVER.AMP.PRECISION = "bfloat16"
    # Mixed-precision inference with SOLVER.AMP.PRECISION (model outputs stay float32).
    cfg.TEST.AMP = CN()
    cfg.TEST.AMP.ENABLED = False
    # Channels-last (NHWC) memory format for the model's 4-D parameters and its input images:
    # faster convolutions with oneDNN (CPU) and cuDNN tensor cores (GPU), same numbers.
    cfg.MODEL.CHANNELS_LAST = False
    # torch.compile of the network (backbone -> head -> classifier, not the list[dict] handling),
    # compiled at the first call; if compilation fails the model logs why and runs eagerly.
    # MODE: torch.compile's mode ("default", "reduce-overhead", "max-autotune", ...);
    # BACKEND: its backend ("inductor"; "aot_eager"/"eager" need no compiler).
    cfg.MODEL.COMPILE = CN()
    cfg.MODEL.COMPILE.ENABLED = False
    cfg.MODEL.COMPILE.MODE = "default"
    cfg.MODEL.COMPILE.BACKEND = "inductor"


def _autocast_device_types(values) -> set:
    return {
        v.device.type
        for v in values
        if isinstance(v, torch.Tensor) and torch.is_autocast_enabled(v.device.type)
    }


def to_float32(value):
    """``value`` cast to float32 if it is a bfloat16/float16 tensor, else unchanged (float32 and
    float64 tensors, non-tensors)."""
    if isinstance(value, torch.Tensor) and value.dtype in _HALF:
        return value.float()
    return value


def float32(fn: Callable) -> Callable:
    """
    Decorator of numerically sensitive code (softmax/log-softmax of losses, sorting, exp, class
    centers): ``fn`` runs with autocast disabled on the devices of its tensor arguments, and its
    bfloat16/float16 tensor arguments (top level, positional or keyword) are cast to float32.
    Float32 inputs outside autocast are passed through unchanged (no copy, same numbers).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        values = list(args) + list(kwargs.values())
        devices = _autocast_device_types(values)
        args = [to_float32(a) for a in args]
        kwargs = {k: to_float32(v) for k, v in kwargs.items()}
        if not devices:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device in sorted(devices):
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class FastPathOptions:
    """What :class:`FastPath` applies (config keys in :func:`add_fast_path_config`)."""

    train_amp: bool = False
    test_amp: bool = False
    precision: str = "bfloat16"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"SOLVER.AMP.PRECISION={self.precision!r}: expected one of {sorted(PRECISIONS)}")

    @classmethod
    def from_config(cls, cfg):
        return cls(
            train_amp=cfg.SOLVER.AMP.ENABLED,
            test_amp=cfg.TEST.AMP.ENABLED,
            precision=cfg.SOLVER.AMP.PRECISION,
            channels_last=cfg.MODEL.CHANNELS_LAST,
            compile=cfg.MODEL.COMPILE.ENABLED,
            compile_mode=cfg.MODEL.COMPILE.MODE,
            compile_backend=cfg.MODEL.COMPILE.BACKEND,
        )


class FastPath:
    """
    Applies :class:`FastPathOptions` to a meta-architecture: :meth:`prepare` (channels-last
    parameters, once at construction), :meth:`run` (a network call on normalised (N, 3, H, W)
    images: channels-last input, autocast of the current mode, compiled if configured) and
    :meth:`autocast` (the context of the training losses). Compiled functions are built at their
    first call and not copied with the model (a deep copy compiles its own).
    """

    def __init__(self, options: FastPathOptions = FastPathOptions()):
        self.options = options
        self._compiled: Dict[str, Callable] = {}

    def __getstate__(self):
        return {"options": self.options, "_compiled": {}}

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.options.precision]

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Convert ``model``'s 4-D parameters and buffers to channels-last (if configured)."""
        if self.options.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def autocast(self, device: torch.device, training: bool):
        """``torch.autocast(device.type, dtype)`` if AMP is on for this mode, else a no-op context."""
        enabled = self.options.train_amp if training else self.options.test_amp
        return torch.autocast(device.type, dtype=self.dtype, enabled=enabled)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 3, H, W) input in the configured memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    def run(self, fn: Callable, images: torch.Tensor, *args, training: bool):
        """``fn(images, *args)`` (``fn`` a bound network method) in the configured memory format,
        under :meth:`autocast`, compiled with ``torch.compile`` if configured."""
        with self.autocast(images.device, training):
            return self._maybe_compiled(fn)(self.images(images), *args)

    def _maybe_compiled(self, fn: Callable) -> Callable:
        if not self.options.compile:
            return fn
        name = fn.__name__
        compiled = self._compiled.get(name)
        if compiled is None:
            compiled = torch.compile(fn, mode=self.options.compile_mode, backend=self.options.compile_backend)
            self._compiled[name] = compiled
        if compiled is fn:  # compilation failed before: eager
            return fn

        def call(*args):
            try:
                return compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as e:  # tracing or backend compilation failed
                cause = getattr(e, "inner_exception", None) or e
                reason = (str(cause).strip().splitlines() or [""])[0]
                logger.warning(
                    f"torch.compile (MODEL.COMPILE: backend={self.options.compile_backend!r}, "
                    f"mode={self.options.compile_mode!r}) failed for {name}, running it eagerly from now on: "
                    f"{type(cause).__name__}: {reason}"
                )
                self._compiled[name] = fn
                return fn(*args)

        return call
