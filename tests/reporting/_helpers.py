"""Shared fixtures-as-functions for the evaluation tests (fake but internally consistent model results)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from hdkd.evaluation import assess_predictions, classification_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_valid_png(path: Path, min_bytes: int = 5_000) -> None:
    path = Path(path)
    assert path.is_file()
    assert path.stat().st_size > min_bytes, f"{path} is suspiciously small"
    width, height = png_size(path)
    assert width > 200 and height > 200
    assert path.read_bytes().rstrip(b"\x00")[-8:-4] == b"IEND"  # complete file


def fake_metrics(n_classes: int, seed: int, skill: float, n: int = 120, names=None) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    y[:n_classes] = np.arange(n_classes)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = names or [f"class {k}" for k in range(n_classes)]
    return classification_metrics(y, probs, names)


def fake_predictions(n_classes: int, seed: int, skill: float, n: int = 120, temperature: float = 1.0):
    """(labels, softmax probabilities) of a fake model whose logits are ``skill`` higher on the true class; the
    probabilities are those of the logits divided by ``temperature`` (> 1: under-confident, < 1: over-confident)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    y[:n_classes] = np.arange(n_classes)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    z = logits / temperature
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    return y, probs / probs.sum(axis=1, keepdims=True)


def fake_assessed(n_classes: int, seed: int, skill: float, n: int = 120, names=None, n_boot: int = 200) -> dict:
    """``assess_predictions`` of a fake over-confident model (test and validation predictions)."""
    names = names or [f"class {k}" for k in range(n_classes)]
    y, probs = fake_predictions(n_classes, seed, skill, n, temperature=0.5)
    y_val, probs_val = fake_predictions(n_classes, seed + 100, skill, n, temperature=0.5)
    return assess_predictions(y, probs, names, y_val, probs_val, n_boot=n_boot, seed=seed)


def fake_history(epochs: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {
                "epoch": e,
                "train_loss": float(1.5 / e + rng.uniform(0, 0.05)),
                "train_accuracy": float(min(1.0, 0.4 + 0.05 * e)),
                "val_loss": None if e == 2 else float(1.7 / e),
                "val_accuracy": None if e == 2 else float(min(1.0, 0.35 + 0.045 * e)),
                "lr": 1e-3 / e,
            }
        )
    return rows
