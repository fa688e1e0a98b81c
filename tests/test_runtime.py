"""hdkd.runtime's process settings: freed activations kept for the next call (glibc's malloc thresholds)."""

import platform
import subprocess
import sys

import pytest

from hdkd.runtime import reuse_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 24 live 4.8 MB maps (one 384-channel 56 x 56 activation each), freed together, eight times over: a forward pass's
# pattern. glibc adapts its thresholds to what the process freed before, so both arms first pin them at glibc's
# starting values (128 KiB), the worst case; reuse_freed_memory must then override them. Prints the page faults of
# the last four rounds (the heap settles in the first four).
_ROUNDS = """
import ctypes, resource, sys, torch
from hdkd.runtime import reuse_freed_memory
libc = ctypes.CDLL(None)
assert libc.mallopt(-3, 128 * 1024) == 1 and libc.mallopt(-1, 128 * 1024) == 1  # M_MMAP_ / M_TRIM_THRESHOLD
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
def one_round():
    maps = [torch.empty(384 * 56 * 56).fill_(1.0) for _ in range(24)]
    del maps
for _ in range(4):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    one_round()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_reused_memory_is_not_page_faulted_back_on_every_call():
    default_applied, default_faults = _faults("glibc")
    applied, faults = _faults("reuse")
    assert default_applied == "None" and applied == "True"
    pages_per_round = 24 * 384 * 56 * 56 * 4 // 4096
    assert default_faults > 2 * pages_per_round  # glibc's starting thresholds: mapped, freed, faulted back
    assert faults < pages_per_round // 4


def test_reuse_freed_memory_is_idempotent():
    assert reuse_freed_memory() == reuse_freed_memory() == GLIBC
