"""The one way files are written: atomically.

Atomic file writes: write a temporary file in the destination's folder, then ``os.replace`` it into place.

A reader (or a crash) therefore never sees a half-written file: the destination is either the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

# mkstemp creates 0600 files; give the final file the usual permissions (0666 minus the umask), as open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: os.PathLike | str, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a binary temp file next to ``path``, fsync it, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
