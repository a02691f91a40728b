"""Scale-out: share a list of work items (files to cloak, cells of an evaluation grid) across processes and GPUs.

Launch any command under ``torchrun`` or ``accelerate launch``; each process (rank) reads the launcher's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), takes a disjoint share of the items, and the results are
the files a single process would write, because every item's result depends only on the item and the seed,
never on which rank computes it or in what order (torch.distributed: https://pytorch.org/docs/stable/distributed.html).

Without those variables (or with ``WORLD_SIZE=1``) nothing here starts a process group, every collective is a
no-op and the one process takes every item: a plain run behaves exactly as if this module did not exist.

Sharing rule (:func:`shard`): longest-processing-time first (Graham, "Bounds on multiprocessing timing
anomalies", SIAM J. Appl. Math. 1969). Items are taken by decreasing weight (ties: the earlier index first) and
each goes to the rank with the least weight so far (ties: fewer items, then the lower rank); every rank then works
through its share in the items' original order. The share depends only on the weights and the world size, never
on timing, and with equal weights it is round-robin by index. Its makespan is within 4/3 of the best possible.

Backends: ``gloo`` on CPUs; with CUDA ``cpu:gloo,cuda:nccl``, so CUDA tensors would go through NCCL while the
small bookkeeping exchanged here (counts, result rows) stays in CPU memory through gloo.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from cloak.errors import ConfigError

T = TypeVar("T")

# A rank that finishes its share waits at the closing barrier for the slowest one; with CPU cloaks or mimic
# fine-tunes that can be many hours, far beyond torch's default 30 minutes. A rank that crashes does not leave
# the others waiting: the launcher (torchrun, accelerate) stops the whole group when one process fails.
TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Node:
    """This process's place in the group.

    Attributes:
        rank: global index of this process, in ``[0, world_size)``; rank 0 writes the merged outputs.
        world_size: number of processes (1: a plain single-process run).
        local_rank: index of this process on its machine; picks its GPU.
        device: the device this process computes on (``cuda:<local_rank>`` under a launcher with CUDA).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "auto"

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes merged outputs and prints totals."""
        return self.rank == 0

    @property
    def label(self) -> str:
        """``"rank 1/4: "`` in a group, empty in a single-process run: a prefix for log lines (no square brackets,
        which rich would take for markup)."""
        return f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""


def launch_env(environ: Mapping[str, str] | None = None) -> Node:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun and ``accelerate launch`` set them.

    Args:
        environ: the environment to read; default ``os.environ``.

    Returns:
        A :class:`Node` (device left at ``"auto"``); ``Node()`` when ``WORLD_SIZE`` is unset.

    Raises:
        ConfigError: a variable is not an integer, ``RANK`` is missing or out of ``[0, WORLD_SIZE)``.
    """
    env = os.environ if environ is None else environ

    def read(name: str, default: int | None) -> int:
        text = env.get(name)
        if text is None:
            if default is None:
                raise ConfigError(
                    f"`{name}` is not set but WORLD_SIZE={env['WORLD_SIZE']} is; start the processes with torchrun "
                    "or accelerate launch, which set RANK, WORLD_SIZE and LOCAL_RANK."
                )
            return default
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"environment variable `{name}` must be an integer, got {text!r}.") from None

    world_size = read("WORLD_SIZE", 1)
    if world_size < 1:
        raise ConfigError(f"environment variable `WORLD_SIZE` must be >= 1, got {world_size}.")
    if world_size == 1:
        return Node()
    rank = read("RANK", None)
    if not 0 <= rank < world_size:
        raise ConfigError(f"environment variable `RANK` must be in [0, {world_size}) (WORLD_SIZE), got {rank}.")
    return Node(rank=rank, world_size=world_size, local_rank=read("LOCAL_RANK", 0))


def rank_device(device: str, node: Node) -> str:
    """The device one rank computes on.

    Args:
        device: what the user asked for: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        node: this process's place in the group.

    Returns:
        ``cuda:<local_rank>`` for ``auto`` or ``cuda`` when there are several processes and CUDA is available,
        so that each process on a machine has its own GPU; otherwise ``device`` unchanged (an explicit
        ``cuda:N`` is the user's choice and kept).
    """
    if node.world_size == 1 or device not in ("auto", "cuda"):
        return device
    import torch

    return f"cuda:{node.local_rank}" if torch.cuda.is_available() else device


@contextmanager
def session(device: str = "auto") -> Iterator[Node]:
    """Join the launcher's process group for the duration of a command, and leave it cleanly.

    A process group is initialised only when ``WORLD_SIZE > 1`` and none exists yet (one started by the caller,
    e.g. by ``accelerate.Accelerator``, is used as is and left for the caller to tear down).

    Args:
        device: the device the user asked for (see :func:`rank_device`).

    Yields:
        This process's :class:`Node`, with the device it must compute on.
    """
    node = launch_env()  # init_process_group reads MASTER_ADDR and MASTER_PORT from the environment too
    node = Node(node.rank, node.world_size, node.local_rank, rank_device(device, node))
    started = False
    if node.world_size > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = node.device.startswith("cuda")
            if cuda:
                torch.cuda.set_device(torch.device(node.device))
            dist.init_process_group(
                backend="cpu:gloo,cuda:nccl" if cuda else "gloo",
                rank=node.rank,
                world_size=node.world_size,
                timeout=TIMEOUT,
            )
            started = True
    try:
        yield node
        if started:
            # The ranks leave together: a rank that tears gloo down while its peer is still finishing its last
            # collective can make the peer abort at exit ("terminate called without an active exception", seen
            # once in about seven test runs). Only on a clean exit: after an error the other ranks may never come.
            dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank gets here; nothing in a single-process run."""
    if _active():
        import torch.distributed as dist

        dist.barrier()


def all_sum(values: Sequence[int]) -> list[int]:
    """Element-wise sum of integer counts over the ranks (the same list on every rank); ``values`` alone when
    single-process."""
    if not _active():
        return list(values)
    import torch
    import torch.distributed as dist

    total = torch.tensor(list(values), dtype=torch.int64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # a CPU tensor: goes through gloo under either backend
    return [int(v) for v in total]


def gather(obj: Any) -> list[Any] | None:
    """Collect one picklable object from every rank on rank 0.

    Returns:
        On rank 0 the objects in rank order; on other ranks None. Single-process: ``[obj]``.
    """
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def shard(weights: Sequence[float], world_size: int) -> list[list[int]]:
    """Split item indices into ``world_size`` disjoint shares of about equal total weight (see the module notes).

    Args:
        weights: the cost of each item, in any unit, >= 0 (e.g. number of 512x512 tiles, number of cells).
        world_size: number of ranks, >= 1.

    Returns:
        One ascending list of indices per rank; together they cover ``range(len(weights))`` exactly once.

    Raises:
        ConfigError: ``world_size`` < 1 or a negative weight.
    """
    if world_size < 1:
        raise ConfigError(f"`world_size` must be >= 1, got {world_size}.")
    bad = next((w for w in weights if not w >= 0), None)
    if bad is not None:
        raise ConfigError(f"item weights must be >= 0, got {bad}.")
    shares: list[list[int]] = [[] for _ in range(world_size)]
    # A heap of (weight so far, items so far, rank): the least loaded rank, then the one with fewer items (so that
    # zero-weight items spread too), then the lowest rank.
    loads = [(0.0, 0, r) for r in range(world_size)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, count, r = heapq.heappop(loads)
        shares[r].append(i)
        heapq.heappush(loads, (load + weights[i], count + 1, r))
    return [sorted(s) for s in shares]


def share(items: Sequence[T], node: Node, weight: Callable[[T], float] | None = None) -> list[T]:
    """This rank's items, in their original order (every item when single-process).

    Args:
        items: the whole work list, in the same order on every rank.
        node: this process's place in the group.
        weight: cost of one item (see :func:`shard`); default 1 each (round-robin).
    """
    if node.world_size == 1:
        return list(items)
    weights = [1.0 if weight is None else weight(item) for item in items]
    return [items[i] for i in shard(weights, node.world_size)[node.rank]]
