"""Data-parallel training under torchrun: one process per device, the frozen teacher replicated on each.

Batches are cut from one global, epoch-seeded permutation: each global batch of `batch_size` images is split into
contiguous per-rank slices, so N processes see exactly the images one process would see with the same global
batch, and gradients (averaged by DDP) match the single-process ones up to floating-point reduction order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout
from torch.utils.data import Sampler

from hdkd.errors import ConfigError
from hdkd.runtime import mix_seed


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _attempt_store(world_size: int) -> Optional[dist.Store]:
    """This attempt's own view of the store torchrun's agent shares with its workers, or None (torch's default).

    torchrun (c10d rendezvous) keeps one store server for the whole job and hands every attempt the same address;
    the keys a killed attempt left there (each rank's address, the start-up barrier) would be read by the restarted
    one, which then connects to dead processes or waits forever. A prefix per restart keeps attempts apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    server = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=default_pg_timeout,
    )
    return dist.PrefixStore(f"hdkd/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", server)


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a plain run is world size 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        store = _attempt_store(world_size)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def restarted_by_elastic() -> bool:
    """Whether torchrun started this process again after a worker of the job failed (``--max-restarts``).

    A restarted worker must continue the run from its last saved state, not start it over: torchrun repeats the
    original command, which has no ``--resume``. torchrun counts the restarts in ``TORCHELASTIC_RESTART_COUNT``.
    """
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) > 0
    except ValueError:
        return False


def cleanup_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch of an epoch-seeded permutation, from global batch `start`.

    `weights` (optional) draws the epoch's indices with replacement in proportion to them (class-balanced
    sampling) instead of a permutation.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        start_batch: int = 0,
        weights: Optional[torch.Tensor] = None,
    ):
        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size: the global batch {batch_size} must be divisible by the {world_size} processes"
            )
        self.num_samples, self.batch_size, self.seed, self.epoch = num_samples, batch_size, seed, epoch
        self.rank, self.world_size, self.drop_last, self.start_batch = rank, world_size, drop_last, start_batch
        self.weights = weights

    def order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights.double(), self.num_samples, replacement=True, generator=g)
        return torch.randperm(self.num_samples, generator=g)

    def num_batches(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if (self.drop_last or rest < self.world_size) else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order().tolist()
        per_rank = self.batch_size // self.world_size
        for b in range(self.start_batch, self.num_batches()):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            share = -(-len(batch) // self.world_size) if len(batch) < self.batch_size else per_rank
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return max(self.num_batches() - self.start_batch, 0)
