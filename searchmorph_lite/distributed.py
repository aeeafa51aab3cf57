"""Several training processes with torch's DistributedDataParallel: the process group and its few collectives.

``torchrun --nproc_per_node=N -m searchmorph_lite train ...`` starts N processes and tells each its place through
the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). :func:`init_from_env` reads it and joins
the process group: nccl when the device is CUDA (each process on GPU ``cuda:LOCAL_RANK``), gloo on CPU. Without
that environment (or with WORLD_SIZE=1) nothing is started and every helper here is a no-op, so single-process
training needs no process group. The state lives in torch.distributed and in the returned :class:`DistInfo`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_LAUNCH = "launch several processes with torchrun (python -m torch.distributed.run --nproc_per_node=N ...)"


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the training processes, the device it trains on, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # init_from_env started the process group, so shutdown ends it

    @property
    def distributed(self) -> bool:
        """True when several processes train together (world_size > 1)."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on rank 0, the process that validates, prints and writes the checkpoint."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    """The integer environment variable ``name``; ValueError naming it when it is missing or not an integer."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        if default is None:
            raise ValueError(f"{name} is not set but WORLD_SIZE is; {_LAUNCH}")
        return default
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer (torchrun sets it), got {text!r}") from None


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it. ValueError when malformed."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        return 0, 1, 0
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must lie in 0..{world_size - 1} (WORLD_SIZE={world_size}), got {rank}")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")
    return rank, world_size, local_rank


def is_main() -> bool:
    """True in the process that prints and writes: rank 0 of the process group, or of torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_world()[0] == 0


def init_from_env(device: torch.device) -> DistInfo:
    """This process's :class:`DistInfo`; joins the process group (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1.

    On CUDA each process trains on ``cuda:LOCAL_RANK`` (an index given with ``--device`` is replaced). A group
    the caller already started is used as it is (and left running). ValueError, naming the problem, when the
    environment is malformed, the device is neither CUDA nor CPU, or there are fewer GPUs than local processes.
    """
    rank, world_size, local_rank = env_world()
    if world_size == 1:
        return DistInfo(device=device)
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK={local_rank} needs GPU cuda:{local_rank} but this machine has {count} GPU(s); start at "
                f"most {count} processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        if not dist.is_gloo_available():
            raise ValueError("several CPU processes need torch.distributed's gloo backend, which this torch lacks")
        backend = "gloo"
    else:
        raise ValueError(f"training on several processes runs on cuda (nccl) or cpu (gloo), not {device.type}")
    if dist.is_initialized():
        if dist.get_world_size() != world_size:
            raise ValueError(
                f"the running process group has {dist.get_world_size()} processes but WORLD_SIZE={world_size}"
            )
        return DistInfo(dist.get_rank(), world_size, local_rank, device, owns_group=False)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} unset; {_LAUNCH}")
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, device, owns_group=True)


def shutdown(info: DistInfo) -> None:
    """End the process group ``init_from_env`` started (nothing otherwise)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait until every process reaches this call (no-op for one process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """``values`` summed element-wise over all processes (float64; the same list on every rank)."""
    if not info.distributed:
        return [float(v) for v in values]
    # nccl reduces only tensors on the process's GPU; gloo only CPU tensors
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_any(flag: bool, info: DistInfo) -> bool:
    """True on every process when ``flag`` is True on any of them."""
    return all_reduce_sum([1.0 if flag else 0.0], info)[0] > 0


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into ``module`` on every rank (no-op for one process).

    DDP keeps the parameters equal by averaging gradients, and sends rank 0's buffers at the start of every
    forward, so after a last step each rank holds the statistics of its own batch; this makes them rank 0's.
    """
    if info.distributed:
        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)
