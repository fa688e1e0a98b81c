"""DataLoaders for evaluation and inference, and the worker count rule every job shares."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from hdkd.errors import ConfigError
from hdkd.runtime import available_cpus


def resolve_num_workers(num_workers: int) -> int:
    """data.num_workers: -1 -> one less than the usable CPUs, at most 8 (at least 0); otherwise as given."""
    if num_workers == -1:
        return max(0, min(available_cpus() - 1, 8))
    if num_workers < 0:
        raise ConfigError(f"data.num_workers: expected -1 or a non-negative integer, got {num_workers}")
    return num_workers


def single_threaded_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers only augment; intra-op threads there would steal the model's cores


def make_loader(
    dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """Evaluation loaders (in order); training batches come from the trainer's own sampler."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        worker_init_fn=single_threaded_worker,
        pin_memory=torch.cuda.is_available(),
    )
