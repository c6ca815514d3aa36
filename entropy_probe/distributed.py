"""Runs over several processes with torch.distributed (launched by torchrun).

`torchrun --nproc-per-node K -m entropy_probe measure ...` starts K processes with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. `init_from_environment`
reads them, joins the process group (gloo on the CPU, nccl on CUDA, where rank r uses the GPU
cuda:LOCAL_RANK) and returns a `Context`. Without those variables it returns the single-process
context and touches nothing, so every caller can use the same code path.

Estimates split their items over the ranks and add the per-cell sums with `all_reduce_sums`;
only rank 0 prints and writes (`is_main_process`, `main_process_only`). Training loops wrap
their network with `wrap_model` (DistributedDataParallel) and take their share of every global
batch with `shard`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import SpecError

logger = logging.getLogger(__name__)

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Context:
    """Rank, number of ranks and the device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Return whether RANK, WORLD_SIZE and LOCAL_RANK are all set, as torchrun does."""
    return all(name in os.environ for name in ENVIRONMENT)


def _local_device(device: str, local_rank: int) -> str:
    parsed = torch.device(device)
    if parsed.type != "cuda":
        return device
    if parsed.index is not None and parsed.index != local_rank:
        logger.info("rank with LOCAL_RANK=%d uses cuda:%d instead of the requested %s", local_rank, local_rank, device)
    return f"cuda:{local_rank}"


def init_from_environment(device: str = "cpu", timeout_s: float = 1800.0) -> Context:
    """Join the process group that torchrun describes, or return the single-process context.

    `device` is the requested device (cpu or cuda); under torchrun a CUDA request becomes
    cuda:LOCAL_RANK. Calling it again in a process that has joined returns the same context.
    """
    if dist.is_available() and dist.is_initialized():
        return current(device)
    if not launched_by_torchrun():
        return Context(device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if world_size <= 1:
        return Context(device=device)
    if not dist.is_available():
        raise SpecError("this torch build has no torch.distributed; run a single process instead of torchrun")
    local = _local_device(device, local_rank)
    backend = "nccl" if torch.device(local).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(local))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    logger.debug("joined process group: rank %d of %d, backend %s, device %s", rank, world_size, backend, local)
    return Context(rank, world_size, local_rank, local, backend)


def current(device: str = "cpu") -> Context:
    """Return the context of an already initialised process group, or the single-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    backend = dist.get_backend()
    local = _local_device(device, local_rank) if backend == "nccl" else device
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, local, backend)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextlib.contextmanager
def main_process_only() -> Iterator[bool]:
    """Yield whether this is rank 0; the ranks meet at a barrier afterwards.

    Use it around writes: ``with main_process_only() as main: if main: save(...)``. The
    barrier keeps other ranks from reading a file before rank 0 has finished it.
    """
    try:
        yield is_main_process()
    finally:
        barrier()


def silence_unless_main(context: Context, keep_stderr: bool = False) -> None:
    """Send the standard output (and error) of ranks other than 0 to /dev/null for good.

    Every rank validates the same input and fails the same way, so rank 0 alone reports. The
    redirection is at the file-descriptor level and so also covers log handlers and messages
    from C++. With `keep_stderr`, errors of other ranks stay visible (for debugging a failure
    of one rank). torchrun reports the exit status of every rank in any case.
    """
    if context.is_main:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    if not keep_stderr:
        os.dup2(null, 2)
    os.close(null)
    logging.getLogger("entropy_probe").setLevel(logging.ERROR)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _reduce_device(tensor: torch.Tensor) -> torch.device:
    # nccl reduces CUDA tensors only; gloo reduces CPU tensors (and CUDA ones by copying).
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over all ranks (a new tensor on the input's device); identity in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    work = tensor.detach().to(_reduce_device(tensor), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over all ranks, for logging losses of a data-parallel step."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return all_reduce_sum(tensor) / world


def all_reduce_sums(sums):
    """Add `NodeSums` (count, Σ, Σ² per cell, all float64) over all ranks; return new sums."""
    from .estimators import NodeSums

    packed = torch.from_numpy(np.concatenate([sums.count[:, None], sums.total, sums.total_sq], axis=1))
    reduced = all_reduce_sum(packed).numpy()
    q = len(sums.quantities)
    return NodeSums(sums.quantities, reduced[:, 0].copy(), reduced[:, 1 : 1 + q].copy(), reduced[:, 1 + q :].copy())


def shard(items: Sequence | np.ndarray | torch.Tensor, context: Optional[Context] = None):
    """This rank's contiguous block of `items` (blocks differ in length by at most one)."""
    context = context or current()
    n = len(items)
    start = n * context.rank // context.world_size
    stop = n * (context.rank + 1) // context.world_size
    return items[start:stop]


def shard_range(n: int, context: Optional[Context] = None) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous block of n items."""
    context = context or current()
    return n * context.rank // context.world_size, n * (context.rank + 1) // context.world_size


def wrap_model(module: torch.nn.Module, context: Optional[Context] = None, **ddp_options) -> torch.nn.Module:
    """Wrap `module` in DistributedDataParallel in a distributed run; return it unchanged otherwise.

    The module must already be on the context's device. Gradients are averaged over the
    ranks during backward, so every rank takes its own share of a global batch (see `shard`)
    and all ranks end each step with the same weights. Reach the inner network as
    `unwrap_model(wrapped)` to save it.
    """
    context = context or current()
    if not context.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if torch.device(context.device).type == "cuda":
        index = torch.device(context.device).index
        return DistributedDataParallel(module, device_ids=[index], output_device=index, **ddp_options)
    return DistributedDataParallel(module, **ddp_options)


def unwrap_model(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)

