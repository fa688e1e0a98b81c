"""Several trainings at once in worker processes: the ablation grid and the pipeline on a small multi-core CPU.

One single-threaded training per core keeps every core busy without the synchronisation cost of multi-threaded
small convolutions (which on a shared 2-core machine also collapse when another process competes). Trainings
are given in priority order with the one they depend on (a distilled model needs its teacher); a free worker takes
the first that can start. Each worker goes through `train_or_reuse(..., resume=True)`, so a finished model is
reused and an interrupted one continues, and it exits when the main process dies, so no orphan goes on writing
into a model folder. Ctrl-C reaches only the main process (workers ignore SIGINT); it stops the workers with
SIGTERM, which unwinds a running training like an interrupt (a checkpoint being written removes its temp file),
and a later ``--resume`` continues from the last finished epoch.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from hdkd.config import Config
from hdkd.runtime import available_cpus
from hdkd.training.trainer import train_or_reuse

__all__ = ["train_in_processes"]


def _exit_with_parent(parent: int) -> None:
    """Stop this worker when the main process is gone (killed, even by SIGKILL)."""

    def watch() -> None:
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


_training = False  # in a worker: whether a training is running (SIGTERM then unwinds it instead of exiting)


def _stop_worker(signum, frame) -> None:
    if _training:
        raise KeyboardInterrupt  # caught in _train_in_worker once the training's writes have cleaned up
    os._exit(130)


def _worker_init(threads: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C goes to the whole group: the main decides
    signal.signal(signal.SIGTERM, _stop_worker)
    torch.set_num_threads(threads)
    _exit_with_parent(parent)


def _train_in_worker(cfg: Config) -> tuple[float, bool]:
    """One training in a worker (its dataset decoded from the shared on-disk cache):
    (seconds, whether it trained rather than reused a finished model)."""
    global _training
    start = time.perf_counter()
    finished = (Path(cfg.output) / "summary.json").is_file()
    _training = True
    try:
        train_or_reuse(cfg, resume=True)
    except KeyboardInterrupt:
        os._exit(130)  # stopped by the main process; no traceback, no result to send
    finally:
        _training = False
    return time.perf_counter() - start, not finished


def _stop_workers() -> None:
    """SIGTERM to every worker of this process (the pool's are its only children while it trains)."""
    for process in multiprocessing.active_children():
        process.terminate()


def train_in_processes(
    tasks: dict[str, tuple[Config, Optional[str]]],
    jobs: int,
    log: Callable[[str], None] = print,
    on_finished: Callable[[set[str]], None] = lambda finished: None,
    trained: Optional[set[str]] = None,
    root: Optional[Path] = None,
) -> set[str]:
    """Train ``tasks`` (output folder -> (resolved config, folder it needs first or None), in priority order) in
    ``jobs`` worker processes with ``cpus // jobs`` threads each.

    ``on_finished(finished folders)`` runs in this process after each training ends, so results can be used while
    later trainings go on. Returns the folders trained (not reused), also added to ``trained`` as they finish.
    Folders in log lines are shown relative to ``root``.
    """

    threads = max(1, available_cpus() // jobs)
    finished: set[str] = set()
    trained = set() if trained is None else trained
    waiting = dict(tasks)
    context = multiprocessing.get_context("spawn")  # no forked copy of this process's threads and state
    with cf.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_worker_init, initargs=(threads, os.getpid())
    ) as pool:
        running: dict[cf.Future, str] = {}
        try:
            _schedule(pool, waiting, running, jobs, finished, trained, log, on_finished, root)
        except KeyboardInterrupt:
            log(
                f"  interrupted: stopped {len(running)} running training(s); rerun the same command (with --resume "
                "for hdkd pipeline) to continue them from their last saved state"
            )
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_workers()
            raise
    return trained


def _schedule(pool, waiting, running, jobs, finished, trained, log, on_finished, root) -> None:
    """Start what can start, wait for one to end, record it; until nothing is left."""
    while waiting or running:
        for out, (cfg, needs) in list(waiting.items()):
            if len(running) >= jobs:
                break
            if needs is None or needs in finished:
                running[pool.submit(_train_in_worker, cfg)] = out
                del waiting[out]
        if not running:
            raise RuntimeError(f"trainings wait for folders that no task produces: {sorted(waiting)}")
        done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for future in done:
            out = running.pop(future)
            try:
                seconds, did_train = future.result()
            except BaseException:
                for other in running:
                    other.cancel()
                log(f"  failed: {out}")
                raise
            shown = Path(out).relative_to(root) if root is not None else Path(out)
            log(f"  {'trained' if did_train else 'reused'} {shown} ({seconds:.0f} s)")
            finished.add(out)
            if did_train:
                trained.add(out)
        on_finished(finished)
