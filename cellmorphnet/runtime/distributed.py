"""Running under ``torch.distributed``: who this process is in a ``torchrun`` job, and the few collective
steps training and inference need.

``torchrun --nproc-per-node N -m cellmorphnet train ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``: SLURM's ``srun`` through torchrun,
Kubernetes' PyTorchJob) starts N copies of the command. ``start`` joins them into one process group: gloo
on CPUs, NCCL on CUDA GPUs. Without those variables everything here is a no-op for one process
(``SINGLE``), so library code calls these functions the same way in both cases.

Everything is in job order: ``shard`` gives each rank one contiguous block of a list, ``map`` runs a
function over every rank's block and hands every rank the whole result in the list's order, so what is
computed from it (a set's scale, stain, crop side) is the same whatever the number of processes.
A rank that dies makes the others' next collective step fail; ``JobBroken`` says so in one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from cellmorphnet.errors import RunError

T = TypeVar("T")
R = TypeVar("R")

TIMEOUT = timedelta(minutes=30)  # how long a rank waits for the others at a collective step (rank 0 validating)


class JobBroken(RunError):
    """Another process of the job stopped (killed, crashed or interrupted): this one cannot go on alone."""


@dataclass(frozen=True)
class Group:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" or "nccl" once started; None for one process

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- work split -------------------------------------------------------------------------

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous block ``[start, stop)`` of ``n`` things."""
        return block(n, self.rank, self.world_size)

    def map(self, fn: Callable[[T], R], items: Sequence[T], workers: int = 1) -> list[R]:
        """``[fn(x) for x in items]``, each rank doing its block (in ``workers`` threads); every rank gets it all."""
        start, stop = self.shard(len(items))
        mine = _thread_map(fn, items[start:stop], workers)
        return mine if not self.active else [r for part in self.all_gather(mine) for r in part]

    # --- collective steps ---------------------------------------------------------------------

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        with _broken_job():
            dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        with _broken_job():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], R]) -> R:
        """``fn()`` run on rank 0 alone, its result on every rank (an error on rank 0 is raised on every rank)."""
        if not self.active:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - handed to every rank, then raised on each
                error = e
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def sum(self, values: Iterable[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks."""
        values = [float(v) for v in values]
        if not self.active:
            return values
        return [sum(col) for col in zip(*self.all_gather(values), strict=True)]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            with _broken_job():
                dist.barrier()


SINGLE = Group()


def block(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous block ``[start, stop)`` of ``n`` things; block sizes differ by one at most, the
    first ranks taking the extra ones, so the blocks in rank order are the whole list in order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def env_group() -> Group:
    """The job this process was launched into, from torchrun's environment variables (not started yet)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise RunError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them).") from None
    if world <= 1:
        return SINGLE
    if not 0 <= rank < world:
        raise RunError(f"RANK {rank} is outside WORLD_SIZE {world}.")
    return Group(rank, world, local)


_started: Group | None = None


def start(device: str = "auto") -> Group:
    """Join the job's process group (once per process): NCCL where this rank trains on a CUDA GPU, else gloo.
    One process without torchrun: ``SINGLE``, nothing started."""
    global _started
    if _started is not None:
        return _started
    group = env_group()
    if not group.active:
        _started = SINGLE
        return SINGLE
    import torch
    import torch.distributed as dist

    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RunError(f"WORLD_SIZE is {group.world_size} but {name} is not set.",
                           hint="Launch with torchrun, which sets it: torchrun --nproc-per-node N -m cellmorphnet ...")
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(group.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        with _broken_job():
            dist.init_process_group(backend, timeout=TIMEOUT)
    _started = Group(group.rank, group.world_size, group.local_rank, backend)
    return _started


def local_device(group: Group, device: str) -> str:
    """The device a rank works on: its own GPU (by local rank) in an NCCL job, else ``device`` as given."""
    if group.backend == "nccl" and device in ("auto", "cuda"):
        import torch

        return f"cuda:{group.local_rank % torch.cuda.device_count()}"
    return device


def stop(*, clean: bool = True) -> None:
    """Leave the process group (at the end of a command). After a command that ended well (``clean``) the ranks
    first wait for each other, so none tears its connections down while another still uses them (gloo aborted a
    rank that finished first, once in CI); after a failure each leaves at once, as the others may be gone."""
    global _started
    if _started is not None and _started.active:
        import torch.distributed as dist

        if dist.is_initialized():
            if clean:
                try:
                    with _broken_job():
                        dist.barrier()
                except JobBroken:
                    pass  # another rank failed: it reports that itself
            dist.destroy_process_group()
    _started = None


def is_job_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective step failing because another rank is gone."""
    import torch.distributed as dist

    if isinstance(error, JobBroken | dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset by peer",
                            "Broken pipe", "Socket Timeout", "timed out"))  # fmt: skip


class _broken_job:
    """Turn a collective step's failure (a peer gone) into ``JobBroken``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        if error is not None and not isinstance(error, JobBroken) and is_job_failure(error):
            raise JobBroken(broken_message()) from None
        return False


def broken_message() -> str:
    rank = _started.rank if _started is not None else 0
    return f"Another process of this torchrun job stopped; rank {rank} stops too."


def _thread_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
