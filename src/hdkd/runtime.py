"""Where and how a run executes: device, precision, CPU count, seeding, model wrappers and run metadata.

The lowest layer with torch in it: every job (training, evaluation, deployment, benchmarks) resolves these the
same way, so a number in a report always says the device, precision, versions and commit that produced it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from hdkd.errors import ConfigError
from hdkd.version import __version__

AMP = ("auto", "none", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def available_cpus() -> int:
    """CPUs this process may use (respects affinity masks such as taskset or container limits where visible)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on a 64-bit system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024
_freed_memory_reused = False


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed activations for the next call instead of handing them back to the OS.

    With glibc's defaults, blocks of a few MB (one 384-channel 56 x 56 map is 4.8 MB) are returned to the kernel
    when freed and page-faulted back, zeroed, on the next forward pass: 4,300 page faults per batch-1 call of the
    student's inference path at 224 px in a fresh process, 1.24 x its latency (benchmarks/freed_memory.py,
    docs/RESULTS.md section 13). Raising the mmap and trim thresholds keeps them in the heap; the process then holds
    its peak working set. Blocks above glibc's largest mmap threshold (32 MB: a 16-image batch of those maps is 77 MB)
    are always mapped afresh, so mmap is switched off (M_MMAP_MAX 0) and they come from the heap too: the fp32 HDKD
    training step at 224 px, batch 16, was 1.9-2.3 x faster for 17-20 % more peak memory. Process-wide and idempotent;
    True where applied (Linux with glibc), False elsewhere."""
    global _freed_memory_reused
    if _freed_memory_reused:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        applied = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
        applied = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and applied
        applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and applied
    except (OSError, AttributeError):
        return False
    _freed_memory_reused = applied
    return applied


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """ "auto" -> CUDA when present; an explicit CUDA request without a GPU is an error naming `option`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{option}: {name} requested but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option}: unknown device {name!r}; choose auto, cpu, cuda or cuda:N") from None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively, so that bf16 autocast is a speed-up, not an emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    return False


@functools.cache
def _first_cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; {} where there is no such file (macOS, Windows)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_vendor() -> str:
    """The CPU's vendor as /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD"); "" where it does not say."""
    return _first_cpu_info().get("vendor_id", "")


def cpu_name() -> str:
    """The CPU as a timing should name it: its model name with family and model numbers (a VM often says only
    "AMD EPYC", and the numbers tell Zen 3 from Zen 4), else what `platform` knows."""
    info = _first_cpu_info()
    name = info.get("model name") or platform.processor() or platform.machine()
    numbers = [f"{key} {info[key]}" for key in ("cpu family", "model") if key in info]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def resolve_amp(option: str, device: torch.device) -> str:
    """train.amp as run on ``device``: "auto" is bf16 where the hardware has native bf16, "none" elsewhere."""
    if option not in AMP:
        raise ConfigError(f"train.amp: unknown {option!r}; choose {', '.join(AMP)}")
    if option == "auto":
        return "bf16" if native_bf16(device) else "none"
    return option


def resolve_channels_last(option: bool | str, device: torch.device, amp: str = "none") -> bool:
    """train.channels_last as run on ``device`` at precision ``amp`` (resolved): "auto" is channels_last for fp32 on
    the CPU, where it was faster on every CPU measured; NCHW under bf16 (slower in channels_last at 64 and 224 px on
    two CPUs) and on CUDA (not measured). docs/RESULTS.md section 13."""
    if option == "auto":
        return device.type == "cpu" and amp == "none"
    if not isinstance(option, bool):
        raise ConfigError(f"train.channels_last: unknown {option!r}; choose auto, true or false")
    return option


def autocast(device: torch.device, amp: str):
    if resolve_amp(amp, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


SEED_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs map to distinct stream seeds for any realistic epoch count


def mix_seed(seed: int, epoch: int) -> int:
    """One integer seed for a (training seed, epoch) pair: the batch order and the augmentation streams use it."""
    return int(seed) * SEED_STRIDE + int(epoch)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile's and DistributedDataParallel's wrappers (its own attributes and
    state-dict keys; the wrappers add `_orig_mod.` / `module.` prefixes)."""

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's wrapper (torch._dynamo.eval_frame.OptimizedModule)
        else:
            return model


def check_compile_options(mode: str | None, backend: str, option: str = "train.compile") -> None:
    """Refuse an unknown torch.compile mode or backend before anything runs (not at the first training step)."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"{option}_mode: unknown {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError(f"{option}_backend: unknown {backend!r}; torch offers {', '.join(sorted(backends))}")


def compile_model(
    model: nn.Module, mode: str | None = None, backend: str = "inductor", option: str = "train.compile"
) -> nn.Module:
    check_compile_options(mode, backend, option)
    return torch.compile(model, mode=mode, backend=backend)


def git_commit(where: Optional[Path] = None) -> tuple[Optional[str], Optional[bool]]:
    """(HEAD commit, whether the work tree has changes) of the git checkout holding hdkd's source; (None, None)
    when it is not a git checkout or git is absent."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=20,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return head.stdout.strip() or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def machine_name() -> str:
    return f"{platform.machine()} {platform.processor() or ''}".strip()


def run_metadata(with_git: bool = False) -> dict[str, Any]:
    """What every result records about the code and machine that produced it (hdkd and torch versions, machine;
    with ``with_git`` the source checkout's commit and whether it had uncommitted changes)."""
    meta: dict[str, Any] = {}
    if with_git:
        commit, dirty = git_commit()
        meta.update(git_commit=commit, git_dirty=dirty)
    meta.update(hdkd_version=__version__, torch=torch.__version__, machine=machine_name())
    return meta


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)
