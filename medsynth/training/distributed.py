"""Multi-process training with torchrun: process group, device per rank, and the few collectives the
loop needs.

``torchrun --nproc_per_node=N -m medsynth train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables set (multi-node: torchrun's
``--nnodes``/``--rdzv-*`` flags, see docs/distributed.md). Each process joins the group (NCCL on
GPUs, gloo on CPUs), trains on its own slice of every global batch, and gradients are averaged by
DistributedDataParallel. Only rank 0 writes checkpoints, logs and grids. Without those variables,
or with ``WORLD_SIZE=1``, everything here is a no-op and training is a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def context_from_env(env=None) -> Context:
    """The torchrun rank variables, or a single process when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env or int(env["WORLD_SIZE"]) <= 1:
        return SINGLE
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ValueError(f"WORLD_SIZE={env['WORLD_SIZE']} but {', '.join(missing)} not set: start distributed "
                         "training with torchrun (torchrun --nproc_per_node=N -m medsynth train ...)")
    return Context(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))


def setup(ctx: Context, device_name: str) -> torch.device:
    """Join the process group and return this rank's device (cuda:LOCAL_RANK, or the CPU)."""
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={device_name} but no CUDA GPU is available on rank {ctx.rank}")
    if use_cuda:
        if torch.cuda.device_count() <= ctx.local_rank:
            raise ValueError(f"rank {ctx.rank} has LOCAL_RANK {ctx.local_rank} but this node has "
                             f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # a long timeout: rank 0 may spend minutes on a FID evaluation while the others wait
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=ctx.rank, world_size=ctx.world_size,
                                timeout=datetime.timedelta(minutes=60))
    return device


def teardown(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def mean_and_any(ctx: Context, values: list[float], flag: bool, device) -> tuple[list[float], bool]:
    """One collective per step: the mean of ``values`` over ranks and whether any rank set ``flag``
    (Ctrl-C on one rank stops all of them at the same step)."""
    if not ctx.enabled:
        return values, flag
    t = torch.tensor([*values, float(flag)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    out = (t / ctx.world_size).tolist()
    return out[:-1], t[-1].item() > 0


def average_gradients(ctx: Context, module: torch.nn.Module) -> None:
    """Average ``module``'s gradients over ranks in one flat all-reduce (for the steps that bypass
    DistributedDataParallel: the R1 penalty needs a double backward, which DDP does not support)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(ctx: Context, modules: list[torch.nn.Module]) -> None:
    """Copy rank 0's floating-point buffers to every rank. Batch-norm running statistics are updated
    from each rank's own slice of the batch, so they drift apart between DDP's broadcasts (at the start
    of each forward, from rank 0); making rank 0's the ones every rank holds is DDP's own rule, applied
    before checkpoints and weight comparisons. Parameters are not touched: their gradients are averaged."""
    if not ctx.enabled:
        return
    for m in modules:
        for b in m.buffers():
            if b.dtype.is_floating_point:
                dist.broadcast(b.data, src=0)


def same_on_all_ranks(ctx: Context, modules: list[torch.nn.Module], device) -> bool:
    """Whether every rank holds bit-identical parameters and buffers (compared by checksum)."""
    if not ctx.enabled:
        return True
    vals = []
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.dtype.is_floating_point:
                v = t.detach().double()
                vals += [v.sum(), (v * torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
                                   .view_as(v)).sum()]
    local = torch.stack(vals).to(device)
    gathered = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
