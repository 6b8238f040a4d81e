"""Data-parallel finetuning across processes (torchrun / accelerate launch), for `finetune.train`.

When `torch.distributed` is initialised with more than one process, `train` splits each optimizer
step's examples across the ranks (rank r takes examples r, r + world, ...), every rank computes its
summed assistant-token loss divided by the step's *global* loss-token count, and the gradients are summed
across ranks before clipping and the optimizer step. That is exactly the single-process gradient of the
same global batch (up to floating-point summation order), so one process and N processes give the same
loss curve (tested with 2 CPU processes over gloo). Only rank 0 writes the run directory (manifest,
train_log.jsonl, checkpoints, final weights); the others wait at a barrier after each write so a resume
sees the same files everywhere.

    torchrun --nproc_per_node 8 -m introspect_mech.finetune.cli --model Qwen/Qwen2.5-7B-Instruct ...

For models that do not fit one GPU (32B), shard parameters with FSDP instead: see docs/finetune.md.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files."""
    return world()[0] == 0


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of one step's examples: items rank, rank + world, ... (all of them in one process).

    Args:
        items: the step's examples, in the same order on every rank.

    Returns:
        `items[rank::world_size]`.
    """
    rank, size = world()
    return list(items[rank::size])


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum tensors across ranks in place (a no-op in one process); flattened into one buffer per dtype.

    Args:
        tensors: the same shapes and dtypes, in the same order, on every rank; overwritten with the sums.
    """
    rank, size = world()
    if size == 1 or not tensors:
        return
    import torch.distributed as dist

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_grads_(params: Sequence[nn.Parameter]) -> None:
    """Sum the gradients of `params` across ranks in place (a no-op in one process).

    Parameters without a gradient get zeros first, so every rank contributes the same tensors in the
    same order.

    Args:
        params: the trainable parameters, in the same order on every rank.
    """
    if world()[1] == 1:
        return
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    all_reduce_sum_(grads)


def all_reduce_float(x: float) -> float:
    """A Python float summed across ranks.

    Args:
        x: this rank's value.

    Returns:
        The sum over ranks (in float64), or `x` in one process.
    """
    if world()[1] == 1:
        return x
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([x], dtype=torch.float64, device=device)
    all_reduce_sum_([t])
    return float(t.item())


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
