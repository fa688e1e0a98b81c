"""Evaluate a saved checkpoint on a split of a dataset, with the data built exactly as in training."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.loaders import make_loader, resolve_num_workers
from hdkd.errors import CheckpointError, DataError
from hdkd.evaluation.bootstrap import bootstrap_ci
from hdkd.evaluation.metrics import classification_metrics
from hdkd.evaluation.predict import predict
from hdkd.models import create_model_from_checkpoint, read_checkpoint_metadata
from hdkd.runtime import resolve_amp, resolve_device


def evaluate_checkpoint(checkpoint: str | Path, data: DataConfig, split: str = "test", batch_size: int = 128,
                        device: str = "auto", amp: str = "auto", n_boot: int = 0,
                        seed: int = 0) -> dict[str, Any]:
    """Metrics of `checkpoint` on `split`; the checkpoint's own img_size, channels and class names are used.
    ``amp`` as train.amp (default auto: the precision `hdkd train` and `hdkd pipeline` test in on this machine).

    With ``n_boot > 0`` the result also has ``bootstrap``: percentile bootstrap 95 % intervals of accuracy, balanced
    accuracy, macro-F1 and macro AUC over ``n_boot`` resamples of the split (``bootstrap_ci``, seeded by ``seed``).
    """

    meta = read_checkpoint_metadata(checkpoint)
    if not meta.get("model_name"):
        raise CheckpointError(f"{checkpoint}: not an hdkd checkpoint (no model metadata); evaluate needs the "
                              f"best.safetensors or last.safetensors written by `hdkd train`")
    extra = meta.get("extra") or {}
    args = meta["model_args"]
    img_size = extra.get("img_size") or args.get("img_size", 224)
    splits = build_datasets(data, img_size, args.get("in_chans"), splits=(split,))
    dataset = splits.split(split)
    if dataset is None:
        raise DataError(f"{data.path}: the data has no {split!r} split")
    names: Optional[list[str]] = extra.get("class_names")
    if names is not None and list(names) != list(splits.class_names):
        raise DataError(f"{data.path}: classes {splits.class_names} differ from the checkpoint's {names}")
    dev = resolve_device(device)
    amp = resolve_amp(amp, dev)
    model = create_model_from_checkpoint(checkpoint).to(dev)
    loader = make_loader(dataset, batch_size, False, resolve_num_workers(data.num_workers))
    y, probs, loss = predict(model, loader, dev, amp)
    metrics = classification_metrics(y, probs, splits.class_names)
    if n_boot and n_boot > 0:
        metrics["bootstrap"] = bootstrap_ci(y, probs, splits.class_names, n_boot=n_boot, seed=seed, estimates=metrics)
    metrics.update(split=split, loss=loss, amp=amp, checkpoint=str(checkpoint), model=meta["model_name"],
                   data=splits.description)
    return metrics
