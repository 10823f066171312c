"""Sharding work across processes launched by ``torchrun`` or ``accelerate launch`` (or none at all).

Both launchers start one process per rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment. :func:`init` reads them and, for more than one process, joins the process group
with the ``gloo`` backend — it only carries barriers and small Python objects, so it works on CPU-only machines and
next to CUDA models alike. Without a launcher (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) everything is a no-op and the
single process is rank 0 of 1.

Protocol used by :mod:`flashu.evaluation` (and meant for any other sharded loop):

1. every rank takes its shard of the item list with :meth:`Shard.take` (strided: rank r gets items r, r + N, …, so
   the ranks stay balanced when item cost varies along the list);
2. each rank writes its own partial results (files under the output directory: a *shared* filesystem is assumed,
   as it is on one machine and for the external scorers that read the images afterwards);
3. :meth:`Shard.barrier`, then rank 0 merges the partials into the report; :meth:`Shard.broadcast` hands the merged
   report back to every rank.

Ranks finish their shards at different times and wait at the barrier, so the process group is created with a long
timeout (``FLASHU_DIST_TIMEOUT_S``, default 24 h) instead of gloo's 30 minutes. If one rank fails, the launcher
tears the others down.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

import torch

from ..errors import FlashuError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world_size`` cooperating processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's items: ``items[rank::world_size]`` (the shards are disjoint and cover ``items``)."""
        return list(items[self.rank::self.world_size])

    def _group(self) -> bool:
        if not self.distributed:
            return False
        if not torch.distributed.is_initialized():
            raise FlashuError(f"rank {self.rank} of {self.world_size} has no process group: call "
                              "flashu.distributed.init() first")
        return True

    def barrier(self) -> None:
        if self._group():
            torch.distributed.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; keep it small)."""
        if not self._group():
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` in rank order on rank 0 (``None`` elsewhere). For in-memory merges, e.g. of
        benchmark rows, when the ranks do not share a filesystem."""
        if not self._group():
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def device(self) -> str:
        """``cuda:LOCAL_RANK`` when CUDA is available (one GPU per rank), else ``cpu``."""
        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"


def from_env(env: Mapping[str, str] | None = None) -> Shard:
    """The shard described by the launcher's environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``); no side effects."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise FlashuError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise FlashuError(f"bad launcher environment: RANK={rank}, WORLD_SIZE={world}")
    return Shard(rank=rank, world_size=world, local_rank=local)


def init(backend: str = "gloo", timeout_s: float | None = None) -> Shard:
    """This process's :class:`Shard`; joins the process group (``env://``) when launched with several processes.

    Idempotent: a process group that already exists (e.g. created by ``accelerate``) is used as it is.
    """
    shard = from_env()
    if shard.distributed and not torch.distributed.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise FlashuError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: start with torchrun or "
                              "accelerate launch")
        seconds = timeout_s if timeout_s is not None else float(os.environ.get("FLASHU_DIST_TIMEOUT_S",
                                                                               DEFAULT_TIMEOUT_S))
        torch.distributed.init_process_group(backend=backend, init_method="env://", rank=shard.rank,
                                             world_size=shard.world_size,
                                             timeout=datetime.timedelta(seconds=seconds))
    if shard.distributed and torch.distributed.get_world_size() != shard.world_size:
        raise FlashuError(f"the existing process group has {torch.distributed.get_world_size()} ranks, the "
                          f"environment says WORLD_SIZE={shard.world_size}")
    return shard


def shutdown() -> None:
    """Leave the process group (if any); call once at the end of a launched program."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
