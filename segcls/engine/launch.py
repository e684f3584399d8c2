"""
Multi-process launching: detectron2's ``launch`` for CUDA (NCCL), plus several CPU processes over
gloo, which detectron2 v0.6's ``launch`` does not support. Both set up detectron2's
``comm`` (global and per-machine process groups) the same way.
"""
import logging
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_processes_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    backend="auto",
    timeout=DEFAULT_TIMEOUT,
):
    """
    Run ``main_func(*args)`` in ``num_processes_per_machine * num_machines`` processes.

    Args:
        backend: ``"nccl"`` (one process per GPU, detectron2's launcher), ``"gloo"`` (CPU
            processes) or ``"auto"`` (nccl when CUDA is available, else gloo).
        dist_url: ``"auto"`` (single machine: a free local port) or e.g. ``"tcp://host:port"``.
    """
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend={backend!r}: expected 'auto', 'nccl' or 'gloo'")
    if backend == "nccl":
        return d2_launch(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout)
    world_size = num_processes_per_machine * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto" or dist_url is None:
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://<host>:<port>")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _gloo_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _gloo_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout):
    rank = machine_rank * num_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    for i in range(world_size // num_per_machine):
        ranks = list(range(i * num_per_machine, (i + 1) * num_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
