"""One decision for every rank of a distributed training job.

Only global rank 0 talks to forgetwatch, but a stop must happen on every rank at the same step: a rank
that stops alone leaves the others waiting in their next collective (the classic multi-GPU hang).
"""

from __future__ import annotations


def rank_zero_decides(decision: bool) -> bool:
    """Rank 0's `decision`, on every rank. A collective when torch.distributed is initialized with more
    than one process: every rank must call it at the same point (each rank's `decision` but rank 0's is
    ignored). Without a process group it returns `decision` unchanged."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return decision
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decision
    on_gpu = "nccl" in str(dist.get_backend()) and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    flag = torch.tensor([1 if decision else 0], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())
