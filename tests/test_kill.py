"""SIGKILL at any point of any command leaves no output that looks complete, and the command then resumes or
restarts cleanly to the outputs of an uninterrupted run.

Each command runs as a subprocess on tiny inputs (the embedded synthetic dataset at 32 px, a few steps; a dozen
32 px PNGs) and is SIGKILLed after a few seeded random delays, each attempt continuing the previous one's folder
(with ``--resume`` where the command has it). After every kill: every file there parses (no torn JSON line, no
truncated checkpoint or image), temporary files only under hidden temp names, and the command's result files (the
last written is its marker) are either absent or complete and equal to the uninterrupted run's. Finally the command
runs to its end and its outputs equal the uninterrupted run's (weights exactly: CPU, fp32, deterministic).
"""

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

EPOCHS, STEPS = 2, 3
TINY = [
    "--img-size",
    "32",
    "--batch-size",
    "8",
    "--no-progress",
    "--workers",
    "0",
    "--amp",
    "none",
    *("--set", "data.max_per_class=8"),
    *("--set", f"train.max_steps_per_epoch={STEPS}"),
    *("--set", "train.deterministic=true"),
    *("--set", "train.save_every_steps=1"),
]
HIDDEN_TEMP = re.compile(r"^\..+\.tmp$")  # hdkd.io.atomic_write's temp names
SEED = 13


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _hdkd(args, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hdkd", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: nothing it started outlives the test
        # as from a terminal: a suite started in the background (`cmd &` in a script) ignores SIGINT, and its
        # children would inherit that and never see the Ctrl-C the tests send
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    return proc.returncode, err.decode(errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run(args, cwd) -> float:
    start = time.perf_counter()
    code, err = _finish(_hdkd(args, cwd))
    assert code == 0, f"hdkd {' '.join(args[:3])} exited {code}: {err[-3000:]}"
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------- reading outputs


def _parse(path: Path) -> None:
    """Raise if ``path`` is not a whole file of its kind (a truncated write would not parse)."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".jsonl":
        for line in path.read_text().splitlines():
            json.loads(line)
        assert path.read_text().endswith("\n") or not path.read_text(), f"{path}: a torn last line"
    elif suffix == ".safetensors":
        load_file(path)
    elif suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".png":
        with Image.open(path) as image:
            image.load()
    elif suffix == ".yaml":
        yaml.safe_load(path.read_text())
    elif suffix == ".csv":
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows and all(len(r) == len(rows[0]) for r in rows), f"{path}: ragged rows"
    elif suffix in (".md", ".html"):
        assert path.stat().st_size > 0, f"{path}: empty"


def _check_files(root: Path) -> None:
    """Every file under ``root`` parses; temporary files only under hdkd.io's hidden temp names."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if HIDDEN_TEMP.match(path.name):
            continue
        assert "tmp" not in path.name.lower(), f"{path}: a temporary file under a visible name"
        try:
            _parse(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read is a half-written file
            raise AssertionError(f"{path}: not a complete file after SIGKILL ({type(exc).__name__}: {exc})") from exc


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys(), (a, b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta), f"{a} and {b} differ"


def _epochs(log: Path) -> list:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["epoch"], r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in lines]


def _same_training(a: Path, b: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        _same_tensors(a / name, b / name)
    assert _epochs(a / "log.jsonl") == _epochs(b / "log.jsonl")
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert (sa["best_epoch"], sa["best_val"]) == (sb["best_epoch"], sb["best_val"])


_RUN_FIELDS = ("metrics", "val_metrics", "best_epoch", "params", "temperature_scaling")


def _same_pipeline(a: Path, b: Path) -> None:
    ra, rb = (json.loads((p / "report.json").read_text())["results"] for p in (a, b))
    assert ra.keys() == rb.keys()
    for role in ra:
        assert {k: ra[role][k] for k in _RUN_FIELDS} == {k: rb[role][k] for k in _RUN_FIELDS}, role
        _same_tensors(a / role / "best.safetensors", b / role / "best.safetensors")


def _same_ablation(a: Path, b: Path) -> None:
    def records(p: Path):
        return [
            {k: r[k] for k in ("variant", "seed", "settings_key", *_RUN_FIELDS[:-1])}
            for r in map(json.loads, (p / "results.jsonl").read_text().splitlines())
        ]

    assert records(a) == records(b)
    report_a = (a / "ablation_report.json").read_text().replace(str(a), str(b))  # it names its results file
    assert _without_times(json.loads(report_a)) == _without_times(json.loads((b / "ablation_report.json").read_text()))


def _without_times(value):
    """``value`` without wall-clock fields (``*_time_s``, ``timestamp``): they differ between any two runs."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not k.endswith("_time_s") and k != "timestamp"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _same_json(name: str) -> Callable[[Path, Path], None]:
    def same(a: Path, b: Path) -> None:
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name

    return same


def _same_explanations(a: Path, b: Path) -> None:
    ea, eb = (json.loads((p / "explanations.json").read_text()) for p in (a, b))
    ea.pop("checkpoint"), eb.pop("checkpoint")
    assert ea == eb
    pngs = sorted(p.name for p in a.glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in b.glob("*.png"))
    for name in pngs:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _same_predictions(a: Path, b: Path) -> None:
    assert (a / "predictions.csv").read_text() == (b / "predictions.csv").read_text()


def _same_export(a: Path, b: Path) -> None:
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    assert (a / "model.md").read_text() == (b / "model.md").read_text()


# --------------------------------------------------------------------------------------------- the commands


@dataclass
class Command:
    name: str
    args: Callable[[dict, Path], list[str]]  # (inputs, output folder) -> arguments
    results: tuple[str, ...]  # files that say "finished", the one written last at the end
    same: Callable[[Path, Path], None]  # outputs of two finished runs agree
    resume: Optional[str] = None  # the option that continues an interrupted run
    kills: int = 2
    resume_needs: Optional[str] = None  # --resume only once this file exists (else the rerun starts over)


COMMANDS = [
    Command(
        "train",
        lambda inp, out: ["train", "student", *TINY, "--epochs", str(EPOCHS), "-o", str(out)],
        ("summary.json",),
        _same_training,
        resume="--resume",
        resume_needs="last_state.pt",
    ),
    Command(
        "pipeline",
        lambda inp, out: ["pipeline", *TINY, "--epochs", "1", "--bootstrap", "20", "-o", str(out)],
        ("report.md", "report.html", "report.json"),
        _same_pipeline,
        resume="--resume",
    ),
    Command(
        "ablate",
        lambda inp, out: [
            "ablate",
            *TINY,
            *("--epochs", "1", "--variants", "student_alone", "--seeds", "0", "-o", str(out)),
        ],
        ("ablation_report.md", "ablation_report.json"),
        _same_ablation,
        kills=2,
    ),
    Command(
        "audit",
        lambda inp, out: ["audit", str(inp["data"]), "--set", "data.val_fraction=0.25", "-o", str(out)],
        ("audit.md", "audit.json"),
        _same_json("audit.json"),
        kills=2,
    ),
    Command(
        "predict",
        lambda inp, out: [
            "predict",
            str(inp["model"]),
            str(inp["data"]),
            *("--device", "cpu", "--no-progress", "-o", str(out / "predictions.csv")),
        ],
        ("predictions.csv",),
        _same_predictions,
        kills=2,
    ),
    Command(
        "explain",
        lambda inp, out: ["explain", str(inp["model"]), *map(str, inp["images"]), "--device", "cpu", "-o", str(out)],
        ("explanations.json",),
        _same_explanations,
        kills=2,
    ),
    Command(
        "export",
        lambda inp, out: ["export", str(inp["model"]), "-o", str(out / "model.onnx")],
        ("model.md", "model.onnx"),  # the model is written last: beside its card or not at all
        _same_export,
        kills=2,
    ),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A two-class folder of 32 px PNGs (one exact duplicate across the classes, for the audit) and a model."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(SEED)
    images = []
    for label in ("a", "b"):
        (root / "data" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            path = root / "data" / label / f"{label}{i}.png"
            Image.fromarray(pixels).save(path)
            images.append(path)
    (root / "data" / "b" / "copy_of_a0.png").write_bytes(images[0].read_bytes())
    trained = root / "train"  # the uninterrupted `train` run; its model is the deployment commands' model
    seconds = _run(COMMANDS[0].args({}, trained), root)
    return {
        "train_seconds": seconds,
        "data": root / "data",
        "images": images[:4],
        "model": trained / "best.safetensors",
        "train": trained,
    }


SLOW = ("pipeline", "ablate")  # three trainings and an evaluation per attempt: about a minute each on 2 busy cores


@pytest.mark.parametrize(
    "command", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.name in SLOW else []) for c in COMMANDS]
)
def test_sigkill_leaves_nothing_that_looks_complete_and_the_rerun_completes(command, inputs, tmp_path):
    straight = tmp_path / "straight"
    if command.name == "train":  # already run once, uninterrupted
        straight, seconds = inputs["train"], inputs["train_seconds"]
    else:
        seconds = _run(command.args(inputs, straight), tmp_path)
    for name in command.results:
        assert (straight / name).is_file(), name

    victim = tmp_path / "killed"
    rng = random.Random(f"{SEED}-{command.name}")
    killed = 0
    for attempt in range(command.kills):
        args = command.args(inputs, victim)
        if attempt and command.resume and (command.resume_needs is None or (victim / command.resume_needs).exists()):
            args.append(command.resume)
        proc = _hdkd(args, tmp_path)
        time.sleep(rng.uniform(0.3, 1.0) * seconds)  # mostly past the imports: into the work and its writes
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        code, err = _finish(proc)
        assert code in (0, -signal.SIGKILL), err[-3000:]
        if victim.exists():
            _check_files(victim)
            present = [name for name in command.results if (victim / name).exists()]
            if (victim / command.results[-1]).exists():  # the marker: it must be a finished run's result
                assert present == list(command.results)
                command.same(straight, victim)
    assert killed, "every attempt finished before its kill: no fault was injected"

    args = command.args(inputs, victim)
    if command.resume and (command.resume_needs is None or (victim / command.resume_needs).exists()):
        args.append(command.resume)
    _run(args, tmp_path)
    _check_files(victim)
    command.same(straight, victim)


# hdkd's CLI, SIGKILLed right after the N-th os.replace onto a file named $KILL_AFTER_NAME: a kill at an exact point
# between two writes (hdkd.io writes every file by os.replace), where a random delay rarely lands.
KILL_AFTER_WRITE = """
import os, signal, sys
name, count, seen = os.environ["KILL_AFTER_NAME"], int(os.environ["KILL_AFTER_COUNT"]), 0
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    global seen
    real_replace(src, dst, *args, **kwargs)
    if os.path.basename(os.fspath(dst)) == name:
        seen += 1
        if seen == count:
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from hdkd.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize(
    "name, count",
    [("last_state.pt", STEPS + 1), ("last_state.pt", 2 * (STEPS + 1))],
    ids=["after_epoch_1_state", "after_the_last_state"],
)
def test_train_killed_right_after_an_epochs_state_resumes_to_the_uninterrupted_run(name, count, inputs, tmp_path):
    """Killed between an epoch's resumable state and its log line (and, the last epoch, its summary): the resumed
    run's log, checkpoints and summary are the uninterrupted run's."""
    args = COMMANDS[0].args(inputs, tmp_path / "killed")
    (tmp_path / "killer.py").write_text(KILL_AFTER_WRITE)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "killer.py"), *args],
        cwd=tmp_path,
        env={**_env(), "KILL_AFTER_NAME": name, "KILL_AFTER_COUNT": str(count)},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert not (tmp_path / "killed" / "summary.json").exists()
    _check_files(tmp_path / "killed")
    _run([*args, "--resume"], tmp_path)
    _same_training(inputs["train"], tmp_path / "killed")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"hdkd serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
        try:
            return _get(url + "/api/health")
        except OSError:
            time.sleep(0.2)
    raise AssertionError("hdkd serve did not answer")


def test_sigkill_of_serve_writes_nothing_and_it_restarts_on_the_same_port(inputs, tmp_path):
    """serve writes no file; killed while starting or while answering, it starts again on the same port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    args = ["serve", str(inputs["model"]), "--port", str(port), "--device", "cpu", "--no-explain"]
    rng = random.Random(f"{SEED}-serve")
    for delay in (rng.uniform(1.0, 4.0), None):  # while starting, then once answering (a connection held open)
        proc = _hdkd(args, tmp_path)
        try:
            if delay is not None:
                time.sleep(delay)
            else:
                assert _wait_for_health(url, proc)
                held = socket.create_connection(("127.0.0.1", port))
                held.sendall(b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            proc.send_signal(signal.SIGKILL)
        finally:
            _finish(proc)
        if delay is None:
            held.close()
    proc = _hdkd(args, tmp_path)
    try:
        assert _wait_for_health(url, proc)
        assert _get(url + "/api/model")
    finally:
        _kill_group(proc)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written where it ran


# ------------------------------------------------------------------------------ Ctrl-C with worker processes


@pytest.mark.slow
def test_ctrl_c_during_a_parallel_pipeline_stops_every_worker_cleanly_and_resume_completes(inputs, tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group) while `pipeline --jobs 2` trains HDKD in one worker
    and the other waits for work: one line and exit 130, no traceback from the main process or either worker, no
    process left, nothing half-written; then ``--resume`` ends with the uninterrupted run's models."""

    def args(out: Path) -> list[str]:
        longer = ("--set", "data.max_per_class=64", "--set", "train.max_steps_per_epoch=12")  # HDKD trains a while
        return ["pipeline", *TINY, *longer, "--epochs", "1", "--bootstrap", "20", "--jobs", "2", "-o", str(out)]

    straight, victim = tmp_path / "straight", tmp_path / "interrupted"
    _run(args(straight), tmp_path)
    proc = _hdkd(args(victim), tmp_path)
    deadline = time.monotonic() + 300
    while not (victim / "hdkd" / "last_state.pt").exists():  # the teacher and the student alone have finished
        assert proc.poll() is None and time.monotonic() < deadline, "the workers never saved a training state"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
        err = err.decode(errors="replace")
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err and "interrupted" in err, err[-3000:]
        for _ in range(100):  # the workers exit with the main process (it joins them)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("a worker outlived the interrupted pipeline")
    finally:
        _kill_group(proc)
    _check_files(victim)
    assert not (victim / "report.json").exists()

    _run([*args(victim), "--resume"], tmp_path)
    _check_files(victim)
    _same_pipeline(straight, victim)


def test_export_killed_after_its_card_leaves_no_model_and_no_earlier_model_beside_the_new_card(inputs, tmp_path):
    """The model is written last, after its card, and an earlier export's files are removed first: killed right
    after the card, the folder holds the new card and no model, never a model without its card or an old model
    beside a new card. The rerun gives the uninterrupted export."""
    straight, victim = tmp_path / "straight", tmp_path / "victim"
    args = next(c for c in COMMANDS if c.name == "export").args
    _run(args(inputs, straight), tmp_path)
    _run(args(inputs, victim), tmp_path)  # an earlier export into the same place
    (tmp_path / "killer.py").write_text(KILL_AFTER_WRITE)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "killer.py"), *args(inputs, victim)],
        cwd=tmp_path,
        env={**_env(), "KILL_AFTER_NAME": "model.md", "KILL_AFTER_COUNT": "1"},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    _check_files(victim)
    assert (victim / "model.md").is_file() and not (victim / "model.onnx").exists()
    _run(args(inputs, victim), tmp_path)
    _same_export(straight, victim)
