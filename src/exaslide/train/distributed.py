"""One code path for 1 CPU, 1 GPU and many GPUs on many nodes.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; when ``WORLD_SIZE > 1``,
:func:`setup` joins the process group (NCCL on GPUs, gloo on CPUs) and picks this
process's device (``cuda:LOCAL_RANK``) through :mod:`exaslide.runtime`. A plain
``python``/``exaslide`` run is a world of one and needs no process group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes checkpoints, metrics and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Join the ``torchrun`` process group if there is one; return the context.

    The device is :func:`exaslide.runtime.resolve_device`'s (``auto``: this rank's GPU
    when CUDA is available); rank and world size are
    :func:`exaslide.runtime.distributed_context`'s.

    Raises:
        DeviceError: a device this machine does not have.
    """
    from exaslide import runtime

    rank, world = runtime.distributed_context()
    local_rank = runtime.local_rank()
    chosen = runtime.resolve_device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank, world, local_rank, chosen)


def teardown(context: Context) -> None:
    """Leave the process group (after a final barrier)."""
    if context.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(context: Context, value):
    """``value`` of every rank, in rank order (just ``[value]`` for one process)."""
    if not context.distributed:
        return [value]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(context: Context, value):
    """Rank 0's ``value`` on every rank."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
