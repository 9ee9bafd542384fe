"""An FSDP2 model (``fully_shard``) on gloo ranks, through the loop-side API on the local executor
(examples/fsdp_script.py): every checkpoint's model and optimizer are a torch.distributed.checkpoint
directory written by every rank, exact through preemptions, skipped like a corrupt file when a rank's
shard is missing or cut, and resharded when the run resumes on another number of ranks."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from support import (
    REPO,
    assert_one_continuous_wandb_run,
    assert_same_state,
    assert_same_training_state,
    children,
    clean_env,
    cli,
    manifest,
    wait_for,
)

from trm_cluster.core.distributed import Ranks
from trm_cluster.rundir.checkpoints import CheckpointError, LoadedCheckpoint
from trm_cluster.rundir.manifest import CheckpointRecord, RunManifest
from trm_cluster.state.registered import RegisteredState
from trm_cluster.state.sharded import read_full
from trm_cluster.state.snapshot import load_sharded

pytestmark = pytest.mark.slow

SCRIPT = REPO / "examples" / "fsdp_script.py"
STEPS = 30  # checkpoints at 10, 20, 30


def submit(run_dir: Path, *args: str, ranks: int = 2, script_args: tuple[str, ...] = ()) -> str:
    done = cli(
        "submit", "--script", str(SCRIPT), "--executor", "local", "--tasks-per-node", str(ranks), "--wait",
        "--wandb-mode", "offline", "--run-dir", str(run_dir), "--steps", str(STEPS), *args,
        *(("--script-args", *script_args) if script_args else ()), cwd=run_dir.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def resume(run_dir: Path, ranks: int, *args: str) -> Any:
    return cli(
        "submit", "--resume", str(run_dir), "--executor", "local", "--tasks-per-node", str(ranks), "--wait",
        *args, cwd=run_dir.parent,
    )  # fmt: skip


def sharded_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:09d}.dcp"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-rank run, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("sharded") / "straight"
    submit(run_dir)
    return run_dir


def test_preempted_twice_it_ends_with_every_full_tensor_of_an_uninterrupted_run(
    straight: Path, workdir: Path
) -> None:
    run_dir = workdir / "preempted"
    submit(run_dir, "--preemptions", "2")
    data = manifest(run_dir)
    assert [s["end_reason"] for s in data["segments"]] == ["preempted", "preempted", "completed"]
    for record in data["checkpoints"]:  # each a DCP directory, its metadata and both ranks' shards recorded
        shards = sorted(Path(p["file"]).name for p in record["parts"] if p.get("sharded"))
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], record
    for run in (straight, run_dir):  # the periodic saves (10, 20) by DCP's own thread, the last one not
        segments = manifest(run)["segments"]
        inside = [len([k for k in (10, 20) if s["start_step"] < k <= s["end_step"]]) for s in segments]
        assert [s["timings"]["background_saves"] for s in segments] == inside and sum(inside) > 0, run
    expected, actual = read_full(sharded_dir(straight, STEPS)), read_full(sharded_dir(run_dir, STEPS))
    assert expected.keys() == actual.keys() == {"model", "optimizer"}
    assert_same_state(expected, actual)  # every full tensor of the model and the optimizer
    # the rest: torch's RNG, the W&B rows (python's and numpy's streams are never seeded nor drawn here)
    assert_same_training_state(straight, run_dir, ignore=("rng.python", "rng.numpy"))
    assert_one_continuous_wandb_run(run_dir, list(range(5, STEPS + 1, 5)))
    shown = cli("status", str(run_dir), cwd=workdir).stdout  # each step's directory, no digest of nothing
    assert "sharded: step_000000030.dcp, 3 files" in shown and "weights sha256" not in shown, shown


def test_a_missing_rank_shard_or_a_cut_one_is_skipped_for_the_checkpoint_before(
    straight: Path, workdir: Path
) -> None:
    run_dir = workdir / "damaged"
    shutil.copytree(straight, run_dir)
    cut = sharded_dir(run_dir, 30) / "__0_0.distcp"
    cut.write_bytes(cut.read_bytes()[:-100])
    (sharded_dir(run_dir, 20) / "__1_0.distcp").unlink()
    done = resume(run_dir, 2, "--steps", "40")
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = manifest(run_dir)["segments"][-1]
    assert (resumed["start_step"], resumed["end_reason"]) == (10, "completed")
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("*_log.err"))
    assert "step_000000030.dcp/__0_0.distcp fails its digest; falling back" in log
    assert "step_000000020.pt lacks the rank file(s) checkpoints/step_000000020.dcp/__1_0.distcp" in log


def test_another_number_of_ranks_is_refused_in_one_line_then_resharded_with_the_flag(
    straight: Path, workdir: Path
) -> None:
    run_dir = workdir / "resharded"
    shutil.copytree(straight, run_dir)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    refused = resume(run_dir, 1, "--steps", "40")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "(step 30) was written by 2 ranks and this submission has 1" in refused.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    for ranks, saved_at, steps in ((1, 30, 40), (2, 40, 50)):  # 2 -> 1, then 1 -> 2
        dump = workdir / f"restored-{ranks}.pt"
        done = resume(
            run_dir, ranks, "--steps", str(steps), "--allow-world-size-change",
            "--", "--dump-restored", str(dump), "--lr", "0.02",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        restored = torch.load(dump, weights_only=True)  # the full state each rank's shards came back as
        assert_same_state(read_full(sharded_dir(run_dir, saved_at)), restored)
        # the sharded optimizer's restored lr wins over the script's new one, and the segment says so
        assert (
            "optimizer group 0: lr 0.01 (checkpoint) vs 0.02" in manifest(run_dir)["segments"][-1]["warning"]
        )
    changes = manifest(run_dir)["config_changes"]
    assert [c["changes"]["world_size"] for c in changes if "world_size" in c["changes"]] == [[2, 1], [1, 2]]


def test_the_doctor_compares_the_full_tensors_of_a_sharded_run(workdir: Path) -> None:
    """One rank (the script shards over a group of one): the doctor reads each step's DCP directory."""
    done = subprocess.run(
        [sys.executable, "-m", "trm_cluster.doctor", "--script", str(SCRIPT), "--steps", "8"],
        cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exact: steps 5..8 after the resumes at steps 4, 5 match" in done.stdout
    # 5 checkpoints: 6 model tensors and 18 optimizer ones each (exp_avg, exp_avg_sq, step), with the RNG's
    compared = int(re.search(r"compared \d+ checkpoints \((\d+) tensors", done.stdout).group(1))  # type: ignore[union-attr]
    assert compared >= 5 * 24, done.stdout


def test_a_kill_during_a_background_sharded_save_loses_that_checkpoint_only(
    straight: Path, workdir: Path
) -> None:
    """Every process of the job is SIGKILLed while the periodic save of step 20 is in flight: DCP has
    written both ranks' shards, rank 1's own part is still a temp file (the test seam holds it there).
    Nothing of step 20 was published, so ``--resume`` starts from step 10, removes the unpublished
    directory, and ends with every full tensor of the uninterrupted run."""
    run_dir = workdir / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", "--script", str(SCRIPT), "--executor", "local",
         "--tasks-per-node", "2", "--wait", "--wandb-mode", "offline", "--run-dir", str(run_dir),
         "--steps", str(STEPS)],
        cwd=workdir, env=clean_env(TRM_CLUSTER_PAUSE_IN_WRITE="step_000000020.rank1:300"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    held = run_dir / "checkpoints"
    wait_for(
        lambda: list(held.glob(".step_000000020.rank1.pt.*.tmp")), what="rank 1's part of step 20 to be held"
    )
    assert (sharded_dir(run_dir, 20) / ".metadata").is_file()  # the shards are written, not published
    job = int(manifest(run_dir)["launch"]["job_id"])
    for pid in [*children(job), job]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert [c["step"] for c in manifest(run_dir)["checkpoints"]] == [10]
    done = resume(run_dir, 2)
    assert done.returncode == 0, done.stdout + done.stderr
    segments = manifest(run_dir)["segments"]
    assert [(s["start_step"], s["end_reason"]) for s in segments][-1] == (10, "completed")
    log = "".join(p.read_text() for p in (run_dir / "logs").glob("*_log.err"))
    assert re.search(r"removed \d+ unpublished checkpoint file\(s\): .*step_000000020\.dcp", log), log[-2000:]
    assert_same_state(read_full(sharded_dir(straight, STEPS)), read_full(sharded_dir(run_dir, STEPS)))
    assert_same_training_state(straight, run_dir, ignore=("rng.python", "rng.numpy"))


def test_a_sharded_checkpoint_is_refused_by_a_loop_that_registers_no_sharded_model(tmp_path: Path) -> None:
    shard = {
        "rank": 0,
        "file": "checkpoints/step_000000010.dcp/.metadata",
        "bytes": 1,
        "sha256": "",
        "sharded": True,
    }
    record = CheckpointRecord(step=10, file="checkpoints/step_000000010.pt", bytes=1, sha256="", created_at="",
                              parts=[shard])  # fmt: skip
    replicated = RegisteredState({"model": torch.nn.Linear(2, 2)})
    with pytest.raises(CheckpointError, match=r"step 10 holds sharded state \(a DCP directory\), but this loop "
                       "registers no sharded model: a sharded run resumes only as a sharded run"):  # fmt: skip
        load_sharded(LoadedCheckpoint(record, {}), replicated, RunManifest(tmp_path), Ranks())


SHARDED_LOOP_MEETS_A_REPLICATED_CHECKPOINT = """
import sys
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from trm_cluster.core.distributed import Ranks
from trm_cluster.rundir.checkpoints import CheckpointError, LoadedCheckpoint
from trm_cluster.rundir.manifest import CheckpointRecord, RunManifest
from trm_cluster.state.registered import RegisteredState
from trm_cluster.state.snapshot import load_sharded

dist.init_process_group("gloo", init_method="file://" + sys.argv[1] + "/store", rank=0, world_size=1)
model = fully_shard(torch.nn.Linear(2, 2))
state = RegisteredState({"model": model, "optimizer": torch.optim.AdamW(model.parameters())})
record = CheckpointRecord(step=10, file="checkpoints/step_000000010.pt", bytes=1, sha256="", created_at="")
try:
    load_sharded(LoadedCheckpoint(record, {}), state, RunManifest(sys.argv[1]), Ranks())
except CheckpointError as error:
    print(error)
dist.destroy_process_group()
"""


def test_a_replicated_checkpoint_is_refused_by_a_loop_with_a_sharded_model(tmp_path: Path) -> None:
    """The other direction, with a real FSDP2 model on a group of one (in its own process)."""
    done = subprocess.run(
        [sys.executable, "-c", SHARDED_LOOP_MEETS_A_REPLICATED_CHECKPOINT, str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == (
        "the checkpoint of step 10 holds no sharded state, but this loop registers the sharded model, "
        "optimizer: a sharded run resumes only as a sharded run (and a replicated one as replicated)"
    )


def test_one_rank_killed_mid_run_fails_the_other_and_the_run_resumes_exactly(
    straight: Path, workdir: Path
) -> None:
    """Rank 1 alone is SIGKILLed after the first checkpoint: rank 0's next collective (an FSDP2
    all-gather) fails at once, the segment is recorded failed, and ``--resume`` ends bit-identical."""
    run_dir = workdir / "one-killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trm_cluster.submit", "--script", str(SCRIPT), "--executor", "local",
         "--tasks-per-node", "2", "--wait", "--wandb-mode", "offline", "--run-dir", str(run_dir),
         "--steps", str(STEPS), "--script-args", "--sleep-per-step", "0.2"],  # killed well before the end
        cwd=workdir, env=clean_env(TRM_CLUSTER_COLLECTIVE_TIMEOUT_S="30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rank0 = wait_for(lambda: manifest(run_dir)["checkpoints"] and manifest(run_dir)["segments"][-1]["pid"])
    (rank1,) = [pid for pid in children(int(manifest(run_dir)["launch"]["job_id"])) if pid != rank0]
    os.kill(rank1, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    assert manifest(run_dir)["segments"][0]["end_reason"] == "failed"
    done = resume(run_dir, 2, "--", "--sleep-per-step", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [s["end_reason"] for s in manifest(run_dir)["segments"]] == ["failed", "completed"]
    assert_same_state(read_full(sharded_dir(straight, STEPS)), read_full(sharded_dir(run_dir, STEPS)))
    # the step's slowness is a script argument (the resume drops it): the only config that differs
    assert_same_training_state(
        straight, run_dir, ignore=("rng.python", "rng.numpy", "meta.config.script.args")
    )
