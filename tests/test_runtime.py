"""hdkd.runtime's process settings: freed activations kept for the next call (glibc's malloc thresholds)."""

import builtins
import platform
import subprocess
import sys

import pytest

from hdkd.runtime import _first_cpu_info, cpu_name, cpu_vendor, reuse_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 24 live 4.8 MB maps (one 384-channel 56 x 56 activation each), or 3 live 77 MB ones (a 16-image batch of them,
# above glibc's largest mmap threshold), freed together, eight times over: a forward pass's pattern. glibc adapts
# its thresholds to what the process freed before, so both arms first pin them at glibc's starting values (128 KiB),
# the worst case; reuse_freed_memory must then override them. Prints the page faults of the last four rounds, after
# eight to let the heap settle: with the 77 MB maps it took 2 to 5 rounds in 8 fresh processes (the small
# allocations around them differ from process to process), and 4 made the test fail about 1 run in 3.
_ROUNDS = """
import ctypes, resource, sys, torch
from hdkd.runtime import reuse_freed_memory
libc = ctypes.CDLL(None)
assert libc.mallopt(-3, 128 * 1024) == 1 and libc.mallopt(-1, 128 * 1024) == 1  # M_MMAP_ / M_TRIM_THRESHOLD
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
count, numel = int(sys.argv[2]), int(sys.argv[3])
def one_round():
    maps = [torch.empty(numel).fill_(1.0) for _ in range(count)]
    del maps
for _ in range(8):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    one_round()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, count: int, numel: int) -> tuple[str, int]:
    args = [sys.executable, "-c", _ROUNDS, mode, str(count), str(numel)]
    applied, faults = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize("count, numel", [(24, 384 * 56 * 56), (3, 16 * 384 * 56 * 56)])
def test_reused_memory_is_not_page_faulted_back_on_every_call(count, numel):
    default_applied, default_faults = _faults("glibc", count, numel)
    applied, faults = _faults("reuse", count, numel)
    assert default_applied == "None" and applied == "True"
    pages_per_round = count * numel * 4 // 4096
    assert default_faults > 2 * pages_per_round  # glibc's starting thresholds: mapped, freed, faulted back
    assert faults < pages_per_round // 4


def test_reuse_freed_memory_is_idempotent():
    assert reuse_freed_memory() == reuse_freed_memory() == GLIBC


def _cpuinfo_read_from(monkeypatch, fake):
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)
    )
    _first_cpu_info.cache_clear()


def test_cpu_vendor_and_name_read_the_first_processor(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n"
        "processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: another\n"
    )
    _cpuinfo_read_from(monkeypatch, fake)
    try:
        assert cpu_vendor() == "AuthenticAMD"
        assert cpu_name() == "AMD EPYC (cpu family 25, model 17)"  # the numbers tell Zen 3 from Zen 4
        fake.unlink()  # no /proc/cpuinfo (macOS, Windows): unknown, not an error
        _first_cpu_info.cache_clear()
        assert cpu_vendor() == "" and cpu_name() == (platform.processor() or platform.machine())
    finally:
        _first_cpu_info.cache_clear()
