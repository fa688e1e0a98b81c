"""The one way a trained checkpoint is evaluated (`evaluate_model`): the pipeline, the ablation runner and
`hdkd evaluate` (`evaluate_checkpoint`, which first builds the data exactly as in training) all call it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.loaders import make_loader, resolve_num_workers
from hdkd.errors import CheckpointError, DataError
from hdkd.evaluation.assess import assess_predictions
from hdkd.evaluation.inference import prepare_for_inference
from hdkd.evaluation.predict import predict
from hdkd.models import count_flops, create_model_from_checkpoint, read_checkpoint_metadata
from hdkd.runtime import resolve_amp, resolve_device


def evaluate_model(
    checkpoint: str | Path,
    test_loader,
    class_names: Sequence[str],
    device: torch.device,
    amp: str = "none",
    val_loader=None,
    n_boot: int = 0,
    seed: int = 0,
    flops_input: Optional[tuple[int, int]] = None,
) -> dict[str, Any]:
    """Test (and validation) predictions of the checkpoint, assessed once.

    Returns ``assess_predictions``'s ``metrics``, ``bootstrap``, ``temperature_scaling`` (fitted on ``val_loader``
    only) and ``predictions``, plus ``loss`` (test cross-entropy), ``amp`` (the precision that ran, ``auto``
    resolved) and, with ``flops_input = (img_size, in_chans)``, ``flops`` per image.
    """
    model = create_model_from_checkpoint(checkpoint)
    flops = count_flops(model, *flops_input) if flops_input is not None else None  # as trained, BatchNorms counted
    model = prepare_for_inference(model.to(device))  # the inference path predict, export and serve share
    amp = resolve_amp(amp, device)
    y, probs, test_loss = predict(model, test_loader, device, amp)
    y_val = probs_val = None
    if val_loader is not None:  # same checkpoint on validation: temperature scaling is fitted there only
        y_val, probs_val, _ = predict(model, val_loader, device, amp)
    assessed = assess_predictions(y, probs, class_names, y_val, probs_val, n_boot=n_boot, seed=seed)
    assessed.update(loss=test_loss, amp=amp)
    if flops is not None:
        assessed["flops"] = flops
    return assessed


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: DataConfig,
    split: str = "test",
    batch_size: int = 128,
    device: str = "auto",
    amp: str = "auto",
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of `checkpoint` on `split`; the checkpoint's own img_size, channels and class names are used.
    ``amp`` as train.amp (default auto: the precision `hdkd train` and `hdkd pipeline` test in on this machine).

    With ``n_boot > 0`` the result also has ``bootstrap``: percentile bootstrap 95 % intervals of accuracy, balanced
    accuracy, macro-F1 and macro AUC over ``n_boot`` resamples of the split (``bootstrap_ci``, seeded by ``seed``).
    """

    meta = read_checkpoint_metadata(checkpoint)
    if not meta.get("model_name"):
        raise CheckpointError(
            f"{checkpoint}: not an hdkd checkpoint (no model metadata); evaluate needs the "
            f"best.safetensors or last.safetensors written by `hdkd train`"
        )
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
    loader = make_loader(dataset, batch_size, False, resolve_num_workers(data.num_workers))
    assessed = evaluate_model(checkpoint, loader, splits.class_names, dev, amp, n_boot=n_boot, seed=seed)
    metrics = assessed["metrics"]
    if assessed["bootstrap"] is not None:
        metrics["bootstrap"] = assessed["bootstrap"]
    metrics.update(
        split=split,
        loss=assessed["loss"],
        amp=assessed["amp"],
        checkpoint=str(checkpoint),
        model=meta["model_name"],
        data=splits.description,
    )
    return metrics
