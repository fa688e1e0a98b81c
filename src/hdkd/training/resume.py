"""Resume safety: a run continues only from its own state, in a folder that holds only its own results.

- `run_identity` describes what a saved state must match (architecture, classes, image size, the exact data);
  the trainer stores it in `last_state.pt` under "run".
- `check_resume_state` loads a state for `--resume` and refuses, saying what differs and how to start fresh, a
  state of another run, a corrupt or foreign file, or no state at all.
- `remove_stale_temp_files` deletes the temp files an atomic write leaves when it is killed (SIGKILL) mid-save.
- `prepare_output_folder`: a fresh run into a used folder first moves the old run's files aside, into
  `<out>.old-<timestamp>/` beside it (nothing is lost and nothing mixes), or deletes them with `overwrite`.
  Only the trainer's own files are touched; anything else in the folder stays where it is.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from hdkd.config import Config
from hdkd.data import DataSplits
from hdkd.errors import CheckpointError

STATE_FILE = "last_state.pt"
STATE_FORMAT = "hdkd-train-state-v1"
# what one training run writes into its folder (hdkd.training.trainer), and `hdkd evaluate`'s metrics beside them
# (summary.json first: moved first, so a folder interrupted mid-move never looks like a finished run)
RUN_FILES = ("summary.json", "config.yaml", "best.safetensors", "last.safetensors", STATE_FILE, "log.jsonl")
RUN_PATTERNS = ("*_metrics.json", "events.out.tfevents.*")  # evaluate's metrics; TensorBoard events
# the keys a state needs to be resumed (hdkd.training.trainer's save_state)
STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "batch", "best_value", "best_epoch", "best_val", "history")
_TEMP_PATTERN = ".*.tmp"  # hdkd.io.atomic_write's temp files: .<name>.<random>.tmp


def data_fingerprint(data: DataSplits) -> str:
    """SHA-256 of what training sees: class names, and the train and validation images (as decoded and resized)
    and labels. Exact, and cheap next to an epoch: about 0.1 s per 100 MB of decoded images."""
    digest = hashlib.sha256(json.dumps(list(data.class_names)).encode())
    for name in ("train", "val"):
        split = data.split(name)
        if split is None:
            digest.update(f"{name}: none\n".encode())
            continue
        images = np.ascontiguousarray(split.images)
        digest.update(f"{name}: {images.shape} {images.dtype}\n".encode())
        digest.update(memoryview(images).cast("B"))
        digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def run_identity(cfg: Config, model_args: dict[str, Any], data: DataSplits) -> dict[str, Any]:
    """What a saved state must match to be resumed by this run (JSON data; stored in the state as "run")."""
    return {
        "format": STATE_FORMAT,
        "role": cfg.role,
        "model": cfg.model.name,
        "model_args": json.loads(json.dumps(model_args)),
        "class_names": list(data.class_names),
        "img_size": cfg.model.img_size,
        "in_chans": data.in_chans,
        "select_metric": cfg.train.select_metric,
        "data": data_fingerprint(data),
    }


_LABELS = {
    "role": "role",
    "model": "model.name",
    "model_args": "model arguments",
    "class_names": "classes",
    "img_size": "model.img_size",
    "in_chans": "input channels",
    "select_metric": "train.select_metric",
    "data": "data (train/val images or labels)",
}


def _fresh_hint(state_path: Path) -> str:
    return (
        f"to start fresh, run without --resume (the old results in {state_path.parent} are moved aside first) "
        f"or choose another --output"
    )


def check_resume_state(state_path: str | Path, expected: dict[str, Any], missing_ok: bool = False) -> Optional[dict]:
    """The state in `state_path` when it belongs to the run `expected` describes (see `run_identity`).

    CheckpointError, one line saying what differs and how to start fresh, for a state of another run, a corrupt or
    foreign file, or none at all; with `missing_ok` (the jobs that resume on their own: the pipeline, the ablation
    grid, a torchrun restart), None when there is no state: the role has not started, or it was killed before its
    first state was saved (checkpoints of that unfinished epoch are moved aside by the fresh start).
    """
    state_path = Path(state_path)
    if not state_path.is_file():
        if missing_ok:
            return None
        started = [n for n in ("best.safetensors", "last.safetensors") if (state_path.parent / n).is_file()]
        what = f" (the folder has {', '.join(started)} but no training state)" if started else ""
        raise CheckpointError(f"--resume: {state_path} not found: nothing to resume{what}; {_fresh_hint(state_path)}")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or unsafe file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(
            f"{state_path}: not a readable training state ({first}); {_fresh_hint(state_path)}"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise CheckpointError(f"{state_path}: not an hdkd training state; {_fresh_hint(state_path)}")
    saved = state.get("run")
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{state_path}: the state does not say which run it belongs to (saved by an older hdkd), so it cannot "
            f"be checked against this one; {_fresh_hint(state_path)}"
        )
    differences = [
        f"{_LABELS.get(key, key)}: state {_shown(saved.get(key))}, this run {_shown(expected.get(key))}"
        for key in expected
        if saved.get(key) != expected.get(key)
    ]
    if differences:
        raise CheckpointError(
            f"{state_path}: belongs to another run ({'; '.join(differences)}); {_fresh_hint(state_path)}"
        )
    return state


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:40] + "..." + text[-12:]


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files atomic writes left in a run's folder when killed mid-save (SIGKILL; Ctrl-C cleans up
    itself). Call it once at the start of a run, before the run writes anything: a run's folder is its own."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in sorted(folder.glob(_TEMP_PATTERN)):
        try:
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


def run_files(out: str | Path) -> list[Path]:
    """The files of an earlier run in `out` (what a fresh run there would otherwise mix with)."""
    out = Path(out)
    found = [out / name for name in RUN_FILES if (out / name).is_file()]
    for pattern in RUN_PATTERNS:
        found += sorted(p for p in out.glob(pattern) if p.is_file())
    return found


def prepare_output_folder(out: str | Path, overwrite: bool = False) -> Optional[Path]:
    """Make `out` ready for a fresh run: an earlier run's files are moved into `<out>.old-<timestamp>/` beside it
    (returned), or deleted with `overwrite` (None returned); the folder is created when absent. Call it only for a
    fresh run (not --resume), on the process that writes (rank 0), before anything is written."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output: {out} is a file, not a folder")
    remove_stale_temp_files(out)
    old = run_files(out)
    out.mkdir(parents=True, exist_ok=True)
    if not old:
        return None
    if overwrite:
        for path in old:
            path.unlink(missing_ok=True)
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}.old-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = out.with_name(f"{out.name}.old-{stamp}-{number}")
    aside.mkdir(parents=True)
    for path in old:
        path.rename(aside / path.name)
    return aside


__all__ = [
    "STATE_FILE",
    "data_fingerprint",
    "run_identity",
    "check_resume_state",
    "remove_stale_temp_files",
    "prepare_output_folder",
    "run_files",
]
