"""Faults in a distributed run: a rank SIGKILLed mid-epoch under torchrun --max-restarts, and two hosts (network
namespaces joined by a veth pair) with a c10d rendezvous between them. Both end with one process's weights.

The model is a tiny ViT (LayerNorm only, SGD, fp32, deterministic), so one process and two agree to float rounding
(see test_distributed.py); the embedded synthetic dataset at 32 px, 2 epochs of 3 steps.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest
from safetensors.torch import load_file

from hdkd.training.distributed import restarted_by_elastic

EPOCHS, STEPS = 2, 3
RUN = [
    "train",
    "student",
    "--img-size",
    "32",
    "--batch-size",
    "8",
    "--no-progress",
    "--workers",
    "0",
    "--epochs",
    str(EPOCHS),
    "--amp",
    "none",
    *("--set", "data.max_per_class=8"),
    *("--set", f"train.max_steps_per_epoch={STEPS}"),
    *("--set", "train.deterministic=true"),
    *("--set", "train.save_every_steps=1"),
    *("--set", "optim.name=sgd"),
    *("--set", "optim.lr=0.1"),
    *("--set", "model.name=vit_tiny_patch16_224"),
    *("--set", "model.kwargs.patch_size=8"),
    *("--set", "model.kwargs.depth=1"),
    *("--set", "model.kwargs.embed_dim=32"),
    *("--set", "model.kwargs.num_heads=2"),
]

# Run as torchrun's worker script: the hdkd CLI, with every optimiser step of this process logged to
# $FAULT_TRACE/rank<R>_attempt<A>.steps (one line a step), and rank 1 of the first attempt SIGKILLing itself right
# after its step $FAULT_KILL_AT_STEP. The global optimiser hook leaves the code under test as it is.
FAULTY_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from hdkd.cli import main

    rank, attempt = int(os.environ["RANK"]), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    trace = Path(os.environ["FAULT_TRACE"]) / f"rank{rank}_attempt{attempt}.steps"
    kill_at = int(os.environ.get("FAULT_KILL_AT_STEP", "0"))
    steps = 0

    def after_step(optimizer, args, kwargs):
        global steps
        steps += 1
        with open(trace, "a") as f:
            f.write(f"{steps}\\n")
        if rank == 1 and attempt == 0 and steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_post_hook(after_step)
    sys.exit(main())
    """
)


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _run(cmd, cwd, timeout, env=None):
    done = subprocess.run(
        ["timeout", "-k", "10", str(timeout), *cmd],
        capture_output=True,
        text=True,
        env=env or _env(),
        cwd=cwd,
        timeout=timeout + 30,
    )
    assert done.returncode == 0, f"{cmd[:6]}... exited {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-4000:]}"
    return done


def _max_difference(a, b) -> float:
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The uninterrupted single-process run every fault scenario must reproduce."""
    out = tmp_path_factory.mktemp("one") / "run"
    _run([sys.executable, "-m", "hdkd", *RUN, "-o", str(out)], out.parent, 300)
    return out


def test_restarted_by_elastic_reads_torchruns_restart_count(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert not restarted_by_elastic()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert not restarted_by_elastic()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert restarted_by_elastic()


def test_a_rank_killed_mid_epoch_is_restarted_from_the_step_checkpoint(tmp_path, one_process):
    """torchrun --max-restarts=1: rank 1 SIGKILLed after step 4 of 6 (mid epoch 2); the restarted job continues from
    rank 0's last step checkpoint (so it trains only the remaining steps) and ends with the uninterrupted weights."""
    (tmp_path / "worker.py").write_text(FAULTY_WORKER)
    trace = tmp_path / "trace"
    trace.mkdir()
    kill_at = STEPS + 1
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=1",
        "--monitor-interval=0.5",
        str(tmp_path / "worker.py"),
        *RUN,
        "-o",
        str(tmp_path / "two"),
    ]
    _run(cmd, tmp_path, 400, _env(FAULT_TRACE=str(trace), FAULT_KILL_AT_STEP=str(kill_at)))

    def steps(rank, attempt):
        path = trace / f"rank{rank}_attempt{attempt}.steps"
        return len(path.read_text().split()) if path.is_file() else 0

    assert steps(1, 0) == kill_at  # the fault happened where it was meant to
    assert not (trace / "rank0_attempt2.steps").exists()  # one restart
    total = EPOCHS * STEPS
    # resumed from the last step checkpoint rank 0 wrote (after step kill_at - 1 or kill_at), not from scratch
    assert steps(0, 1) in (total - kill_at, total - kill_at + 1), (steps(0, 1), total)
    assert steps(1, 1) == steps(0, 1)
    assert _max_difference(one_process / "last.safetensors", tmp_path / "two" / "last.safetensors") <= 1e-6
    assert _max_difference(one_process / "best.safetensors", tmp_path / "two" / "best.safetensors") <= 1e-6
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


# ------------------------------------------------------------------------------------------------ two hosts


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair, 10.251.0.1/30 and 10.251.0.2/30, each with its loopback up;
    removed afterwards whatever happens (deleting a namespace deletes its end of the pair, and so the pair)."""
    if shutil.which("ip") is None:
        pytest.skip("two-host run: the `ip` command (iproute2) is not installed")
    tag = uuid.uuid4().hex[:6]
    hosts = [
        {"ns": f"hdkd{tag}a", "dev": f"hk{tag}a", "addr": "10.251.0.1"},
        {"ns": f"hdkd{tag}b", "dev": f"hk{tag}b", "addr": "10.251.0.2"},
    ]
    made = []
    try:
        for h in hosts:
            done = _ip("netns", "add", h["ns"])
            if done.returncode:
                pytest.skip(
                    f"two-host run: cannot create a network namespace (needs root / CAP_NET_ADMIN): "
                    f"{done.stderr.strip()}"
                )
            made.append(h["ns"])
        steps = [("link", "add", hosts[0]["dev"], "type", "veth", "peer", "name", hosts[1]["dev"])]
        for h in hosts:
            steps += [
                ("link", "set", h["dev"], "netns", h["ns"]),
                ("-n", h["ns"], "addr", "add", f"{h['addr']}/30", "dev", h["dev"]),
                ("-n", h["ns"], "link", "set", h["dev"], "up"),
                ("-n", h["ns"], "link", "set", "lo", "up"),
            ]
        for step in steps:
            done = _ip(*step)
            if done.returncode:
                pytest.skip(f"two-host run: `ip {' '.join(step)}` failed: {done.stderr.strip()}")
        ping = subprocess.run(
            ["ip", "netns", "exec", hosts[1]["ns"], "ping", "-c", "1", "-W", "5", hosts[0]["addr"]],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if ping.returncode and shutil.which("ping"):
            pytest.skip(f"two-host run: the namespaces cannot reach each other: {ping.stdout}{ping.stderr}")
        yield hosts
    finally:
        for ns in made:
            _ip("netns", "del", ns)
        _ip("link", "del", hosts[0]["dev"])  # only if it never moved into its namespace


def test_two_hosts_with_a_c10d_rendezvous_match_one_process(tmp_path, one_process, two_hosts):
    """torchrun --nnodes=2, one node per namespace, rendezvous and gloo only over the veth pair."""
    endpoint = f"{two_hosts[0]['addr']}:29531"
    nodes = []
    for node_rank, h in enumerate(two_hosts):
        cmd = [
            "timeout",
            "-k",
            "10",
            "300",
            "ip",
            "netns",
            "exec",
            h["ns"],
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id=hdkd-{h['ns'][:-1]}",
            f"--local-addr={h['addr']}",
            f"--rdzv-conf=is_host={int(node_rank == 0)}",  # torchrun's own guess looks at the host's name only
            "-m",
            "hdkd",
            *RUN,
            "-o",
            str(tmp_path / "two"),
        ]
        env = _env(GLOO_SOCKET_IFNAME=h["dev"])
        nodes.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [node.communicate(timeout=340)[0].decode(errors="replace") for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, text in zip(nodes, outputs):
        assert node.returncode == 0, text[-4000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert _max_difference(one_process / "last.safetensors", tmp_path / "two" / "last.safetensors") <= 1e-6
