"""submitit executors for Slurm, local processes and in-process debugging, from one options dataclass."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit
from submitit.local.local import LocalJob

ExecutorKind = Literal["auto", "slurm", "local", "debug"]

UNLIMITED_SUBMITIT_TIMEOUTS = 1_000_000
"""submitit counts "timeouts" by a wall-time guess and stops requeueing after max_num_timeout; the
requeue budget is kept in the manifest instead (timeouts counted from what Slurm says, preemptions
never), so submitit's own counter is set out of reach."""


@dataclass
class ExecutorOptions:
    """Where and how the job runs. Not part of the training config: may change on every --resume."""

    executor: ExecutorKind = "auto"
    """slurm, local (a process per task on this machine, real signals), debug (in this process), or
    auto: slurm when the Slurm controller answers, else local."""
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    """Processes (ranks) per node: 0 means one per GPU with --gpus-per-node, else 1. Several CPU ranks
    (gloo) rehearse multi-GPU training here: --tasks-per-node 2."""
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    """Time limit per job (Slurm) or per process (local)."""
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    """Seconds before the time limit at which the job is warned (USR2): longer than a save takes."""
    max_requeues: int = 20
    """Requeues after a time limit before the run gives up; preemptions are not counted."""
    max_failures: int = 3
    """Tries of one step: an exception in a step is retried from the last checkpoint until the same
    step has failed this many times in a row; then the run stops as failed (1: never retried)."""
    allow_world_size_change: bool = False
    """Resume with another number of ranks than the checkpoint's: model and optimizer are restored, the
    per-rank RNG streams re-derived (recorded as a config change; no longer an exact continuation)."""
    sbatch: tuple[str, ...] = field(default_factory=tuple)
    """Extra sbatch options as KEY=VALUE (e.g. --sbatch exclusive=1 mail_type=END)."""
    job_name: str = "trm"

    def validate(self, kind: str | None = None) -> None:
        """Refuse what cannot run, before anything is written; ``kind``: the resolved executor."""
        if self.time_min <= 0:
            raise ValueError(f"--time-min must be positive, got {self.time_min}")
        if self.signal_delay_s < 0 or self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"--signal-delay-s must be in [0, time limit = {self.time_min * 60} s), got {self.signal_delay_s}"
            )
        if self.nodes < 1 or self.tasks_per_node < 0:
            raise ValueError(
                f"--nodes must be >= 1 and --tasks-per-node >= 0, got {self.nodes} and {self.tasks_per_node}"
            )
        if self.gpus_per_node and self.tasks_per_node not in (0, self.gpus_per_node):
            raise ValueError(
                f"--tasks-per-node {self.tasks_per_node} with --gpus-per-node {self.gpus_per_node}: "
                "one task per GPU (leave --tasks-per-node out)"
            )
        if self.gpus_per_node < 0:
            raise ValueError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if kind == "local" and self.nodes != 1:
            raise ValueError("--nodes must be 1 with the local executor (it runs on this machine)")
        if kind == "debug" and (self.nodes != 1 or self.tasks != 1):
            raise ValueError(
                "the debug executor runs one process (in this one); use --executor local for ranks"
            )
        if self.max_failures < 1:
            raise ValueError(f"--max-failures must be >= 1, got {self.max_failures}")
        if self.max_requeues < 0:
            raise ValueError(f"--max-requeues must be >= 0, got {self.max_requeues}")
        for item in self.sbatch:
            if "=" not in item:
                raise ValueError(f"--sbatch takes KEY=VALUE items, got {item!r}")

    @property
    def tasks(self) -> int:
        """Tasks per node: one per GPU, or --tasks-per-node, or 1."""
        return self.tasks_per_node or self.gpus_per_node or 1

    def extra_sbatch(self) -> dict[str, str]:
        return {key.replace("-", "_"): value for key, _, value in (i.partition("=") for i in self.sbatch)}


def slurm_available() -> bool:
    """True when a Slurm controller answers (a bare ``sbatch`` binary is not enough)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def resolve_kind(kind: ExecutorKind) -> str:
    if kind == "auto":
        return "slurm" if slurm_available() else "local"
    return kind


def slurm_parameters(options: ExecutorOptions) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": options.job_name,
        "time": options.time_min,
        "nodes": options.nodes,
        "ntasks_per_node": options.tasks,
        "signal_delay_s": options.signal_delay_s,
        "partition": options.partition,
        "cpus_per_task": options.cpus_per_task,
        "gpus_per_node": options.gpus_per_node or None,
        "mem": f"{options.mem_gb:g}GB" if options.mem_gb else None,
        "account": options.account,
        "qos": options.qos,
        "constraint": options.constraint,
    }
    params = {k: v for k, v in params.items() if v is not None}
    if options.nodes * options.tasks > 1:  # a failed rank ends the step: a frozen peer cannot hold the job
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if options.sbatch:
        params["additional_parameters"] = options.extra_sbatch()
    return params


def make_executor(kind: str, options: ExecutorOptions, folder: Path) -> submitit.Executor:
    if kind == "slurm":
        slurm = submitit.SlurmExecutor(folder=folder, max_num_timeout=UNLIMITED_SUBMITIT_TIMEOUTS)
        slurm.update_parameters(**slurm_parameters(options))
        return slurm
    if kind == "local":
        local = LocalExecutor(folder=folder, max_num_timeout=UNLIMITED_SUBMITIT_TIMEOUTS)
        local.update_parameters(
            timeout_min=options.time_min,
            tasks_per_node=options.tasks,
            signal_delay_s=options.signal_delay_s,
            **({"gpus_per_node": options.gpus_per_node} if options.gpus_per_node else {}),
        )
        return local
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise ValueError(f"unknown executor {kind!r} (auto, slurm, local, debug)")


LOCAL_CONTROLLER = Path(__file__).with_name("local_controller.py")
"""The local controller process's script (see its docstring): submitit's Controller with Slurm's requeue
count and ``srun --kill-on-bad-exit``."""


class LocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor whose controller reruns a requeued task as often as Slurm would requeue it.

    The only change is the controller's command line (:data:`LOCAL_CONTROLLER`): ``_submit_command`` is
    submitit 1.5's own, calling :func:`start_controller` below instead of submitit's.
    """

    def _submit_command(self, command: str) -> LocalJob[Any]:
        ntasks = self.parameters.get("tasks_per_node", 1)
        n_gpus = self.parameters.get("gpus_per_node", 0)
        visible_gpus = self.parameters.get("visible_gpus", ())
        gpus = range(n_gpus) if visible_gpus == () else visible_gpus[:n_gpus]
        process = start_controller(
            folder=self.folder,
            command=command,
            tasks_per_node=ntasks,
            cuda_devices=",".join(str(k) for k in gpus),
            timeout_min=self.parameters.get("timeout_min", 2.0),
            signal_delay_s=self.parameters.get("signal_delay_s", 30),
            stderr_to_stdout=self.parameters.get("stderr_to_stdout", False),
            setup=self.parameters.get("setup", ()),
        )
        return LocalJob(
            folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks))
        )


def start_controller(
    folder: Path,
    command: str,
    tasks_per_node: int,
    cuda_devices: str,
    timeout_min: float,
    signal_delay_s: int,
    stderr_to_stdout: bool,
    setup: Sequence[str],
) -> subprocess.Popen[bytes]:
    """``submitit.local.local.start_controller`` (submitit 1.5), starting :data:`LOCAL_CONTROLLER`."""
    env = dict(os.environ)
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(tasks_per_node),
        SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "",
        SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices,
        SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
    )
    controller = [
        sys.executable,
        "-P",
        str(LOCAL_CONTROLLER),
        str(folder),
    ]  # -P: not trm_cluster/ on sys.path
    if setup:  # the controller then takes the shell's pid as the job id, as submitit's does
        return subprocess.Popen(" && ".join([*setup, shlex.join(controller)]), shell=True, env=env)
    return subprocess.Popen(controller, env=env)


def sbatch_script(options: ExecutorOptions, folder: Path, array: int = 0) -> str:
    """The sbatch script a Slurm submission would use, without needing Slurm on this machine.

    submitit builds it in ``submitit.slurm.slurm._make_sbatch_string`` (private, but the only way to
    see the script without submitting); the command line is the one SlurmExecutor runs.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    params = slurm_parameters(options)
    if array:  # a sweep: one job array of that many elements
        params["map_count"] = array
    return str(_make_sbatch_string(command=command, folder=folder, **params))
