"""Two Slurm node names on this host (a second private cluster, scripts/slurm-local.sh with
``TRM_SLURM_NODES=2``): an FSDP2 model sharded across the nodes, its checkpoints written by both.

Its own file, so that it runs beside tests/scheduler/test_slurm.py: its jobs go to its own controller and
nodes, never to the single-node test cluster whose tests depend on what else holds that node.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    REPO,
    assert_one_continuous_wandb_run,
    assert_same_state,
    assert_same_training_state,
    clean_env,
    cli,
    manifest,
    wait_for,
)

from trm_cluster.core.distributed import master_address
from trm_cluster.state.sharded import read_full

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1800)]

SCRIPT = REPO / "examples" / "fsdp_script.py"
STEPS = 30  # checkpoints at 10, 20 and 30
COMMON = ("--script", str(SCRIPT), "--wandb-mode", "offline", "--steps", str(STEPS))


def free_port_base(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports, from 7817 on (the test cluster has 6817-6820)."""
    for base in range(7817, 9817, 10):
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports in 7817-9816")


def slow_to_daemonize_slurmd(folder: Path) -> Path:
    """A ``slurmd`` first on PATH that returns at once and starts the real one a second later: a daemon
    whose pidfile is not there yet when its launcher has returned, as CI's loaded machine once had it
    (the start then called a healthy slurmd dead). ``slurmd -C`` (the node's hardware) passes through."""
    real = shutil.which("slurmd")
    assert real, "slurmd is not installed"
    folder.mkdir()
    wrapper = folder / "slurmd"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -C "*) exec {real} "$@" ;; esac\n'
        f'(sleep 1; exec {real} "$@") </dev/null >/dev/null 2>&1 &\n'
    )
    wrapper.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def two_node_slurm() -> Iterator[dict[str, str]]:
    """``TRM_SLURM_NODES=2 scripts/slurm-local.sh start``: nodes n1 and n2 on this host, one slurmd each,
    with its own state, ports and munge; stopped and removed at the end. Yields the environment that
    selects it. Its state is in /tmp itself: munged refuses a socket below a directory that is not
    searchable by all, as pytest's tmp_path is."""
    state = tempfile.mkdtemp(prefix="trm-slurm-nodes-", dir="/tmp")
    knobs = {
        "TRM_SLURM_DIR": state,
        "TRM_SLURM_NODES": "2",
        "TRM_SLURM_PORT_BASE": str(free_port_base(5)),  # slurmctld, slurmd n1, slurmdbd, MariaDB, slurmd n2
    }
    script = str(REPO / "scripts" / "slurm-local.sh")
    slow = slow_to_daemonize_slurmd(Path(state) / "slow-bin")
    started = subprocess.run(  # the slow slurmd is this start's own test, below
        [script, "start"],
        env=clean_env(**knobs, PATH=f"{slow}:{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"SLURM_CONF": f"{state}/etc/slurm.conf"}
    finally:
        stopped = subprocess.run([script, "stop"], env=clean_env(**knobs), capture_output=True, timeout=600)
        if stopped.returncode == 0:  # else leave the state for the logs (and the pidfiles to stop it by)
            shutil.rmtree(state)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two ranks uninterrupted, on the local executor (neither the executor nor the node layout
    changes the math): the reference."""
    run_dir = tmp_path_factory.mktemp("nodes") / "straight"
    done = cli("submit", *COMMON, "--executor", "local", "--tasks-per-node", "2", "--wait",
               "--run-dir", str(run_dir), cwd=run_dir.parent)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir


def test_the_start_waits_for_slurmds_whose_pidfiles_come_late(two_node_slurm: dict[str, str]) -> None:
    """The fixture started this cluster with ``slow_to_daemonize_slurmd`` first on PATH and asserted that
    the start succeeded; here both nodes answer, each served by its own slurmd."""
    listed = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %T"], env=clean_env(**two_node_slurm), capture_output=True, text=True
    )
    states = dict(line.split() for line in listed.stdout.splitlines())
    assert set(states) == {"n1", "n2"}, listed.stdout + listed.stderr
    assert all(state in ("idle", "mixed", "allocated") for state in states.values()), states


def test_the_master_address_of_a_node_name_that_is_no_host_name_is_its_node_addr(
    two_node_slurm: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", two_node_slurm["SLURM_CONF"])
    assert master_address("n2") == "127.0.0.1"  # `scontrol show node n2`: NodeAddr=127.0.0.1
    assert master_address("localhost") == "localhost"  # a name that resolves is kept


def test_a_model_sharded_across_two_nodes_stops_together_requeues_and_ends_bit_identical(
    two_node_slurm: dict[str, str], straight: Path
) -> None:
    """``--nodes 2 --tasks-per-node 1``: one rank of an FSDP2 model on each Slurm node, n1 and n2 (which
    resolve to no host: rank 0 is found at n1's NodeAddr). Each checkpoint is a DCP directory both ranks
    wrote into; USR2 to both, one requeue of the same job; every full tensor of the model and the optimizer
    as in the uninterrupted run, and one W&B run."""
    run_dir = straight.parent / "nodes"
    submitted = cli(
        "submit", *COMMON, "--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1",
        "--nodes", "2", "--tasks-per-node", "1", "--run-dir", str(run_dir),
        "--script-args", "--sleep-per-step", "0.5", cwd=run_dir.parent, timeout=900, **two_node_slurm,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    jid = str(manifest(run_dir)["launch"]["job_id"])
    wait_for(lambda: any(c["step"] >= 10 for c in manifest(run_dir)["checkpoints"]), 300, "checkpoint 10")
    subprocess.run(["scancel", "--signal=USR2", jid], env=clean_env(**two_node_slurm), check=True)
    wait_for(lambda: manifest(run_dir)["status"] in ("completed", "failed"), 600, "the run to end")
    data = manifest(run_dir)
    segments = data["segments"]
    assert [s["end_reason"] for s in segments] == ["preempted", "completed"], segments
    assert segments[0]["end_step"] < STEPS and segments[1]["start_step"] == segments[0]["end_step"]
    assert segments[0]["job_id"] == segments[1]["job_id"]  # requeued, not resubmitted
    shards = sorted(Path(p["file"]).name for p in data["checkpoints"][-1]["parts"] if p.get("sharded"))
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each node's rank wrote its shard
    final = f"checkpoints/step_{STEPS:09d}.dcp"
    assert_same_state(read_full(straight / final), read_full(run_dir / final))
    assert_same_training_state(
        straight, run_dir, ignore=("rng.python", "rng.numpy", "meta.config.script.args")
    )
    assert_one_continuous_wandb_run(run_dir, list(range(5, STEPS + 1, 5)))
    for rank in (0, 1):  # submitit's view of each task, from SLURM_NODEID and SLURM_PROCID, on both starts
        out = (run_dir / "logs" / f"{jid}_{rank}_log.out").read_text()
        assert out.count(f"node={rank}(2), global_rank={rank}(2)") == 2, out
