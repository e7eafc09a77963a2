"""Multi-process training with PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; this module reads them,
initialises the process group (NCCL on GPUs, gloo on CPU) with a timeout on collectives,
and provides the few collectives the trainer needs. Ranks training side by side on one
CPU take their share of its cores (:func:`cpu_resources`). A plain ``python -m resnetlab
train`` is the world of one process and touches none of this.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from ..device import cpu_share, usable_cores
from ..errors import TrainingError
from ..models.blocks import BatchNormAct2d


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # the processes of the job on this machine

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The process's place in the job, from torchrun's environment (a world of 1 without)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )


def _launcher_environ() -> dict[str, str] | None:
    """The environment the parent process (torchrun) was started with; None if unreadable.

    ``/proc/PID/environ`` holds a process's environment as it was at exec time: variables
    the process sets for itself afterwards (``os.environ[...] = ...``) do not appear in it.
    """
    try:
        raw = Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def user_omp_threads(info: DistInfo) -> int | None:
    """The thread count of an OMP_NUM_THREADS the user set; None if unset or set by torchrun.

    torchrun (torch/distributed/run.py) sets OMP_NUM_THREADS=1 in its own environment, with
    a warning, when it starts more than one process per node and the variable is unset; the
    workers inherit it, so they see "1" whether the user asked for it or not. The two are
    told apart by torchrun's exec-time environment (:func:`_launcher_environ`): the user's
    variable is there, torchrun's own is not. When that cannot be read, a "1" is taken as
    the user's: one thread per rank is torchrun's documented default, and never
    oversubscribes the cores.
    """
    value = os.environ.get("OMP_NUM_THREADS")
    if value is None:
        return None
    try:
        n = int(value.split(",")[0])  # OpenMP also takes a list, one count per nesting level
    except ValueError:
        return None  # not a count: OpenMP ignores it, and so does the sizing
    if n < 1:
        return None
    if n == 1 and info.local_world_size > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        parent = _launcher_environ()
        if parent is not None and "OMP_NUM_THREADS" not in parent:
            return None
    return n


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def cpu_resources(
    info: DistInfo,
    device: torch.device,
    *,
    threads: int | None,
    num_workers: int,
    announce: bool = False,
) -> tuple[int | None, int]:
    """Intra-op threads and loader workers for this rank (:func:`resnetlab.device.cpu_share`).

    Only processes training on the CPU, several to a machine, share its cores; on a GPU, or
    alone, ``(threads, num_workers)`` come back as given. ``announce`` prints the choice in
    one line (rank 0).
    """
    if device.type != "cpu" or info.local_world_size <= 1:
        return threads, num_workers
    cores, omp = usable_cores(), user_omp_threads(info)
    n_threads, workers = cpu_share(
        info.local_world_size, threads, num_workers, cores=cores, omp_threads=omp
    )
    if announce:
        source = f" (threads={threads})" if threads else " (OMP_NUM_THREADS)" if omp else ""
        print(
            f"distributed on CPU: {_plural(info.local_world_size, 'rank')} x "
            f"{_plural(n_threads or 1, 'thread')}{source}, "
            f"{_plural(workers, 'loader worker')} each ({_plural(cores, 'core')})",
            file=sys.stderr,
        )
    return n_threads, workers


def restarted(device: torch.device) -> bool:
    """Whether torchrun (``--max-restarts``) has restarted this worker group.

    Asked of all ranks: each node's agent counts only the restarts it caused, so after a
    failure on another node this node's TORCHELASTIC_RESTART_COUNT may still be 0.
    """
    count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    return all_reduce_sum(torch.tensor([float(count)], device=device)).item() > 0


def setup(device: torch.device, timeout_s: float) -> DistInfo:
    """Join the process group torchrun set up; pick this rank's GPU. A no-op for one process."""
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    # A rank that dies or hangs makes the others fail after `timeout_s` instead of waiting
    # forever; torchrun then tears the group down (and restarts it with --max-restarts).
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _worker_group_store(info, timeout)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(
            backend, store=store, rank=info.rank, world_size=info.world_size, timeout=timeout
        )
    return info


_HANDSHAKE = "resnetlab/handshake"


def _worker_group_store(info: DistInfo, timeout: datetime.timedelta) -> dist.Store | None:
    """The key space of this worker group in torchrun's store; None outside torchrun.

    torchrun's agent hosts one TCP store for the whole job and hands the same one to every
    worker group it (re)starts, with the keys of the groups before still in it. A restarted
    group that bootstraps gloo/NCCL there reads its dead predecessors' addresses and
    hangs or fails (pytorch/pytorch#135712). Each group therefore agrees on a fresh
    session token first and keeps its keys under it. TORCHELASTIC_RESTART_COUNT cannot
    serve as the token: on several nodes the agents count restarts differently.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None  # rank 0 hosts a store of its own: nothing stale in it
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), info.world_size,
        is_master=False, timeout=timeout,
    )  # fmt: skip
    token = agree_on_session(store, info.rank, info.world_size, timeout)
    return dist.PrefixStore(f"resnetlab/{token}", store)


def agree_on_session(
    store: dist.Store, rank: int, world_size: int, timeout: datetime.timedelta,
    poll_s: float = 0.02,
) -> str:  # fmt: skip
    """A token new to this worker group and known to all its ranks, through ``store``.

    The store may hold the keys of earlier groups, so no rank can trust a value it did not
    ask for. Each rank > 0 posts a random nonce and waits for rank 0's answer under that
    nonce, which no earlier group can have written; rank 0 answers whatever nonce it finds
    (a stale one too: harmless) until every rank has confirmed under rank 0's new token.
    Returns only when all ranks have joined; raises RuntimeError after ``timeout``.
    """
    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"{_HANDSHAKE}/hello/{rank}", nonce)
        answer = f"{_HANDSHAKE}/answer/{nonce}"
        try:
            store.wait([answer], timeout)
        except RuntimeError as e:  # torch's DistStoreError, a RuntimeError, on a timeout
            raise TrainingError(
                f"rank {rank}: no word from rank 0 within {timeout} ({e}). Check that every "
                "node's torchrun started; a slow start needs a larger dist_timeout_s"
            ) from e
        token = store.get(answer).decode()
        store.set(f"{_HANDSHAKE}/{token}/joined/{rank}", "1")
        return token
    token = uuid.uuid4().hex
    pending, answered = set(range(1, world_size)), {}
    deadline = time.monotonic() + timeout.total_seconds()
    while pending:
        for r in sorted(pending):
            hello = f"{_HANDSHAKE}/hello/{r}"
            if store.check([hello]):
                nonce = store.get(hello).decode()
                if answered.get(r) != nonce:
                    store.set(f"{_HANDSHAKE}/answer/{nonce}", token)
                    answered[r] = nonce
            if store.check([f"{_HANDSHAKE}/{token}/joined/{r}"]):
                pending.discard(r)
        if pending and time.monotonic() > deadline:
            raise TrainingError(
                f"ranks {sorted(pending)} did not join within {timeout}. Check that every "
                "node's torchrun started; a slow start needs a larger dist_timeout_s"
            )
        if pending:
            time.sleep(poll_s)
    return token


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch across all ranks.

    Written here because ``torch.nn.SyncBatchNorm`` runs only on GPUs and its converter
    replaces subclasses (dropping the ReLU of a pre-activation ``BatchNormAct2d``). The
    sums travel through the autograd-aware all-reduce, so gradients are exact too. State
    dict keys are those of ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / c, device=x.device, dtype=torch.float32)
        stats = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count])
        stats = funcol.all_reduce(stats, "sum", dist.group.WORLD)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.num_batches_tracked)
            )
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * n / (n - 1).clamp_min(1)
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


class SyncBatchNormAct2d(BatchNormAct2d, SyncBatchNorm2d):
    """Synchronised BN followed by ReLU (MRO: BatchNormAct2d's ReLU over the synced BN)."""


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d (and BatchNormAct2d) for its synchronised twin, in place."""
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm2d, BatchNormAct2d):
            new_cls = SyncBatchNormAct2d if type(child) is BatchNormAct2d else SyncBatchNorm2d
            new = new_cls(child.num_features, child.eps, child.momentum, child.affine,
                          child.track_running_stats)  # fmt: skip
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module


__all__ = [
    "DistInfo",
    "SyncBatchNorm2d",
    "agree_on_session",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "convert_sync_batchnorm",
    "cpu_resources",
    "env_info",
    "restarted",
    "setup",
    "user_omp_threads",
]
