"""Throughput options of a measurement: batch size, precision, memory layout, compilation, prefetch.

None of them changes what is estimated. The network may run in bf16 or fp16 under CUDA autocast,
but autocast leaves float64 tensors alone, so the conversion of its output to e_θ and every sum
stay float64. Options that need CUDA (autocast, compilation, CUDA graphs) fall back to plain
float32 evaluation on other devices with a logged note, never an error.

`choose_batch_size` sizes batches under a memory budget. On CUDA it reads torch.cuda's
peak-memory counter over two probe batches and fits a line in the batch size. Elsewhere it adds
the bytes of every module output during one probe forward pass and the float64 temporaries of
the rates, an upper bound because nested modules count shared outputs twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import torch

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Automatic batch sizes are multiples of this (the chunk size of the draws) ...
BATCH_QUANTUM = 64
#: ... and at most these many items: beyond a few thousand items a CPU gains nothing, and a
#: GPU batch of 65536 items already hides every launch overhead.
MAX_AUTO_BATCH = {"cpu": 4096, "cuda": 65536}

#: Float64 arrays of one item's size that the rate computation keeps alive at its peak (x_0, ε,
#: x_t, score, e_θ, residual and the denoiser's own temporaries), for the memory estimate.
RATE_TEMPORARIES = 12

T = TypeVar("T")


def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def effective_options(device: str, precision: str, compile_model: bool, cuda_graphs: bool) -> tuple[str, bool, bool, list[str]]:
    """Drop the options this device cannot use; return them and a note per dropped option."""
    notes = []
    if not is_cuda(device):
        if precision != "fp32":
            notes.append(f"--precision {precision} uses CUDA autocast; evaluating in float32 on {device}")
            precision = "fp32"
        if compile_model:
            notes.append(f"--compile is used on CUDA only; evaluating eagerly on {device}")
            compile_model = False
        if cuda_graphs:
            notes.append(f"--cuda-graphs needs a CUDA device; evaluating without graphs on {device}")
            cuda_graphs = False
    for note in notes:
        logger.info(note)
    return precision, compile_model, cuda_graphs, notes


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for the network's forward pass (a null context in fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def prepare_module(module: torch.nn.Module, *, channels_last: bool, compile_model: bool, cuda_graphs: bool) -> torch.nn.Module:
    """Return `module` in channels-last layout and compiled, as requested.

    CUDA graphs come from torch.compile's "reduce-overhead" mode, which captures and replays
    them. That mode needs inputs of a fixed shape, so the estimator pads the last batch.
    """
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if cuda_graphs:
        module = torch.compile(module, mode="reduce-overhead")
    elif compile_model:
        module = torch.compile(module)
    return module


def prefetched(items: Iterable[T], prepare: Callable[[T], object], enabled: bool = True) -> Iterator[object]:
    """Yield prepare(item) for every item, preparing the next one in a background thread.

    The draws and time coefficients of a batch are CPU work; preparing batch i + 1 while the
    device evaluates batch i hides it. Errors raised by `prepare` reach the caller in order.
    """
    if not enabled:
        for item in items:
            yield prepare(item)
        return
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="entropy-probe-prefetch") as pool:
        pending = None
        first = next(iterator, None)
        if first is None:
            return
        pending = pool.submit(prepare, first)
        for item in iterator:
            ready = pending.result()
            pending = pool.submit(prepare, item)
            yield ready
        yield pending.result()


# --- automatic batch size ---------------------------------------------------------------------

def default_memory_budget(device: str | torch.device) -> float:
    """Bytes that evaluation may use: 80 % of free CUDA memory, or 1/8 of the physical memory."""
    if is_cuda(device):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return 0.8 * free
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 2**30
    return physical / 8


def module_output_bytes(module: torch.nn.Module, run: Callable[[], None]) -> int:
    """Sum of the bytes of every submodule's output tensors while `run` executes."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        for tensor in _tensors(output):
            total += tensor.numel() * tensor.element_size()

    handles = [m.register_forward_hook(count) for m in module.modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif hasattr(value, "__dataclass_fields__") or hasattr(value, "to_tuple"):
        # Output dataclasses (diffusers' outputs are dicts and take the branch above).
        for item in vars(value).values():
            yield from _tensors(item)


def choose_batch_size(
    probe: Callable[[int], None],
    device: str | torch.device,
    item_dim: int,
    network: Optional[torch.nn.Module],
    budget_bytes: Optional[float] = None,
    units_per_item: int = 1,
) -> tuple[int, dict]:
    """Largest batch (network evaluations, a multiple of BATCH_QUANTUM) that fits the budget.

    `probe(n)` evaluates the rates of n items once. Returns the batch size and a record of
    how it was chosen (for the provenance of the result).
    """
    budget = float(budget_bytes) if budget_bytes else default_memory_budget(device)
    kind = "cuda" if is_cuda(device) else "cpu"
    if kind == "cuda":
        per_item, fixed = _cuda_bytes_per_item(probe, torch.device(device))
        method = "CUDA peak memory of probe batches of 64 and 256 items"
    else:
        probe_items = 2 * units_per_item
        temporaries = RATE_TEMPORARIES * item_dim * 8
        if network is not None:
            activations = module_output_bytes(network, lambda: probe(probe_items)) / probe_items
            method = "sum of module output sizes in one probe forward pass, plus float64 temporaries"
        else:
            probe(probe_items)
            activations = 0.0
            method = "float64 temporaries of the rates (the model exposes no torch module)"
        per_item, fixed = activations + temporaries, 0.0
    items = int((budget - fixed) // max(per_item, 1.0))
    quantum = BATCH_QUANTUM * units_per_item
    batch = max(quantum, min(MAX_AUTO_BATCH[kind], items) // quantum * quantum)
    record = {
        "method": method,
        "budget_bytes": int(budget),
        "bytes_per_item": int(per_item),
        "fixed_bytes": int(fixed),
        "batch_size": batch,
    }
    logger.info("automatic batch size %d (%.3g MB per item, budget %.3g GB)", batch, per_item / 1e6, budget / 1e9)
    return batch, record


def _cuda_bytes_per_item(probe: Callable[[int], None], device: torch.device) -> tuple[float, float]:
    sizes = (64, 256)
    peaks = []
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    for size in sizes:
        torch.cuda.reset_peak_memory_stats(device)
        probe(size)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    slope = max((peaks[1] - peaks[0]) / (sizes[1] - sizes[0]), 1.0)
    fixed = max(peaks[0] - slope * sizes[0], 0.0)
    # Allocator fragmentation and cuDNN workspaces grow with the batch: keep a margin.
    return 1.15 * slope, fixed

