"""The ablation records file (``OUTPUT/results.jsonl``): one JSON line per (variant, seed), read and appended
atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hdkd.io import atomic_write_text

RESULTS_FILE = "results.jsonl"


# ------------------------------------------------------------------------------------------------------ running
def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl (a line that is not complete JSON, e.g. a torn last line, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a float (a diverged run's loss) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line by rewriting the file atomically: readers never see a torn line."""
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(_finite(record), allow_nan=False, default=str) + "\n")
