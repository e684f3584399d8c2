"""
Measurement helpers shared by the benchmarks: wall-clock timing (CUDA-synchronised), the peak
resident memory of a block of code (Linux), interleaved repeats, FLOP counts and the subprocesses
that measure in a fresh process.

Peak resident memory (CPU, Linux): writing 5 to ``/proc/self/clear_refs`` resets the kernel's
high-water mark of the resident set (``VmHWM``) to the current resident size (``VmRSS``), so
``VmHWM - VmRSS before`` after a call is the call's peak growth. glibc keeps freed small blocks in
its heap, where a later peak goes unseen: :func:`pin_malloc_to_mmap` fixes the mmap threshold so
that every tensor buffer is its own mapping, returned to the system when freed. The kernel's
accounting is exact to some tens of KiB only.
"""
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def synchronize(device: str = "cpu"):
    """Wait for the queued CUDA kernels (a no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds ``fn()`` takes, synchronising CUDA before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def proc_status_bytes(field: str) -> int:
    """``VmRSS`` (resident set) or ``VmHWM`` (its peak) of this process in bytes, from
    /proc/self/status (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss():
    """Reset the peak resident set size (VmHWM) to the current one (Linux >= 4.0), so that the peak
    measures what runs next rather than the imports."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def pin_malloc_to_mmap(mmap_threshold: int, trim_threshold: Optional[int] = None):
    """glibc: serve allocations >= ``mmap_threshold`` bytes by mmap and stop raising that threshold
    (and, given, fix the heap's trim threshold), so that a freed tensor leaves the resident set.
    Returns the C library (raises ``OSError`` without glibc)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    if trim_threshold is not None:
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return libc


class PeakMemory:
    """Time and peak resident-memory growth of a call (Linux + glibc), in bytes; None elsewhere.
    Pins glibc's mmap threshold (see the module docstring) when created."""

    def __init__(self, mmap_threshold: int = 64 * 1024, trim_threshold: Optional[int] = None):
        self.enabled = sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)
        if self.enabled:
            try:
                libc = pin_malloc_to_mmap(mmap_threshold, trim_threshold)
                self.trim = lambda: libc.malloc_trim(0)
            except OSError:
                self.enabled = False

    def measure(self, fn: Callable[[], object]) -> Tuple[float, Optional[int]]:
        """Run ``fn()``; return (seconds, peak bytes above the resident set before the call or None)."""
        if self.enabled:
            self.trim()
            reset_peak_rss()
            before = proc_status_bytes("VmRSS")
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        peak = proc_status_bytes("VmHWM") - before if self.enabled else None
        return seconds, peak


def interleave(
    names: Iterable[str], repeats: int, warmup: int = 0, alternate: bool = True
) -> Iterator[Tuple[int, List[str], bool]]:
    """The rounds of an interleaved comparison: ``(round, order, measured)`` for ``warmup +
    repeats`` rounds, ``order`` being ``names`` (reversed every other round with ``alternate``) and
    ``measured`` False for the first ``warmup`` rounds."""
    names = list(names)
    for i in range(warmup + repeats):
        yield i, names[::-1] if alternate and i % 2 else names, i >= warmup


def interleaved(
    runs: Dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    measure: Callable[[Callable[[], object]], object] = timed,
    alternate: bool = True,
) -> Dict[str, list]:
    """``measure(fn)`` of each callable of ``runs`` ({name: fn}), the calls interleaved as in
    :func:`interleave`. Returns {name: [measure(...) of every measured round]}."""
    samples = {name: [] for name in runs}
    for _, order, measured in interleave(runs, repeats, warmup, alternate):
        for name in order:
            sample = measure(runs[name])
            if measured:
                samples[name].append(sample)
    return samples


def deform_conv2d_flop_jit(inputs, outputs):
    """fvcore handle of ``torchvision::deform_conv2d(input, weight, offset, mask, bias, ...)``: one
    multiply-add per output element, input channel of its group and kernel tap, as a convolution."""
    from fvcore.nn.jit_handles import get_shape

    weight = get_shape(inputs[1])  # (C_out, C_in / groups, kh, kw)
    out = get_shape(outputs[0])
    return out[0] * out[1] * out[2] * out[3] * weight[1] * weight[2] * weight[3]


def matmul_flop_jit(inputs, outputs):
    """fvcore handle of ``aten::matmul`` for every operand rank (fvcore's own asserts on a 1-D
    operand): each output element costs one multiply-add per element of the contracted dimension,
    the last of the first operand."""
    from fvcore.nn.jit_handles import get_shape

    out = get_shape(outputs[0]) or []
    contracted = get_shape(inputs[0])[-1]
    return int(torch.Size(out).numel()) * contracted


EXTRA_HANDLES = {"torchvision::deform_conv2d": deform_conv2d_flop_jit, "aten::matmul": matmul_flop_jit}


def count_flops(module: torch.nn.Module, inputs: Sequence):
    """fvcore's ``FlopCountAnalysis`` of ``module(*inputs)`` (one multiply-add = 1 flop) with
    segcls's extra operator handles (:data:`EXTRA_HANDLES`), its warnings about unsupported ops and
    uncalled modules silenced."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, tuple(inputs)).set_op_handle(**EXTRA_HANDLES)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def run_python(args: Sequence[str], check: bool = False) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh process of this interpreter, with this segcls checkout first on
    its path; stdout and stderr captured as text."""
    checkout = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([checkout, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], env=env, check=check, capture_output=True, text=True)


def write_json(path: str, results) -> None:
    """Write ``results`` to ``path`` as indented JSON (the benchmarks' --json / --output); no-op
    for an empty path."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
