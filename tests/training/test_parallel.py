"""Trainings in worker processes (hdkd.training.parallel)."""

import pytest


def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    """SIGKILL of `hdkd ablate --jobs N` must not leave workers training on into the grid's folders."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "grid_main.py"  # a file, so that spawned workers can import `work` from it
    script.write_text(f"""
import concurrent.futures as cf, multiprocessing, os, time
from hdkd.training.parallel import _worker_init

def work(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_worker_init, initargs=(1, os.getpid())) as pool:
        pool.submit(work, {str(pid_file)!r}).result()
""")
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() < deadline and parent.poll() is None, "the worker never started"
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived the killed main process")
