"""Why a Slurm job was asked to stop, decided from what ``scontrol show job -o`` prints (Slurm 22.05, the
fields measured in docs/slurm.md). A real ``scontrol`` first on PATH prints the captured line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trm_cluster.core.job_context import JobContext, _executor_kind, slurm_job_fields
from trm_cluster.core.signals import StopRequest

NOW = 1_780_000_000.0  # the moment the signal arrived; every time in the line is relative to it
DELAY_S = 60  # --signal-delay-s: USR2@60


def slurm_time(offset_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW + offset_s))  # local, no offset: as Slurm


def job_line(state: str, reason: str, end_s: float, preempt_s: float | None = None) -> str:
    """One line as Slurm 22.05 prints it for a submitit job of a 2-minute limit, started 45 s ago."""
    start, preempt = slurm_time(-45), "None" if preempt_s is None else slurm_time(preempt_s)
    return (
        f"JobId=4242 JobName=submitit UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 "
        f"Account=(null) QOS=(null) JobState={state} Reason={reason} Dependency=(null) Requeue=1 Restarts=0 "
        f"BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:45 TimeLimit=00:02:00 TimeMin=N/A "
        f"SubmitTime={slurm_time(-46)} EligibleTime={slurm_time(-46)} AccrueTime={slurm_time(-46)} "
        f"StartTime={start} EndTime={slurm_time(end_s)} Deadline=N/A PreemptEligibleTime={start} "
        f"PreemptTime={preempt} SuspendTime=None SecsPreSuspend=0 LastSchedEval={start} Scheduler=Main "
        f"Partition=gpu AllocNode:Sid=node1:5121 ReqNodeList=(null) ExcNodeList=(null) NodeList=node1 "
        f"BatchHost=node1 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
        f"TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=1:0:*:* CoreSpec=* MinCPUsNode=1 "
        f"MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
        f"Licenses=(null) Network=(null) Command=/runs/r/logs/submission_file.sh WorkDir=/runs "
        f"StdErr=/runs/r/logs/4242_0_log.err StdIn=/dev/null StdOut=/runs/r/logs/4242_0_log.out Power="
    )


def install_scontrol(directory: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    scontrol = directory / "scontrol"
    scontrol.write_text("#!/bin/sh\n" + script)
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")


def classify(signum: int) -> str:
    context = JobContext(
        executor="slurm", job_id="4242", array_index=None, restart_count=0, host="node1", pid=1,
        global_rank=0, world_size=1, started_at=NOW - 45,
    )  # fmt: skip
    return context.classify(StopRequest(signum, NOW), DELAY_S)


@pytest.mark.parametrize(
    ("signum", "line", "reason"),
    [
        # preemption: PreemptTime set, EndTime moved to the end of GraceTime (30 s), well inside the delay
        (signal.SIGUSR2, job_line("RUNNING", "None", 30, preempt_s=-0.5), "preempted"),
        # the time-limit warning: EndTime unchanged, 77.5 s ahead for USR2@60 (measured)
        (signal.SIGUSR2, job_line("RUNNING", "None", 78), "timeout"),
        # scancel --signal=USR2 on a 1 h job: nothing changed, the end is far away
        (signal.SIGUSR2, job_line("RUNNING", "None", 3592), "preempted"),
        # the time-limit kill (its warning missed): Reason=TimeLimit, EndTime reset to now
        (signal.SIGTERM, job_line("COMPLETING", "TimeLimit", 0), "timeout"),
        # plain scancel: EndTime now, Reason None: a cancel, never to be requeued
        (signal.SIGTERM, job_line("CANCELLED", "None", 0), "cancelled"),
        # SIGTERM at the end of a preemption's grace time
        (signal.SIGTERM, job_line("RUNNING", "None", 0, preempt_s=-30), "preempted"),
    ],
)
def test_the_stop_reason_comes_from_what_slurm_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, line: str, reason: str
) -> None:
    (tmp_path / "job.txt").write_text(line + "\n")
    install_scontrol(
        tmp_path, monkeypatch, f'[ "$*" = "show job -o 4242" ] || exit 2\ncat "{tmp_path}/job.txt"\n'
    )
    assert classify(signum) == reason


@pytest.mark.parametrize(
    ("limit_s", "reason"), [(45 + 60 + 60, "timeout"), (3600, "preempted"), (None, "preempted")]
)
def test_a_failing_scontrol_judges_by_the_time_limit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    limit_s: float | None,
    reason: str,
) -> None:
    """With scontrol failing, a stop 45 s into the process is a timeout when the job's limit is within the
    signal delay (+ Slurm's 60 s slack) of it, else a preemption; so time limits still spend the budget."""
    install_scontrol(tmp_path, monkeypatch, "echo 'slurm_load_jobs error: Unable to contact slurm "
                     "controller (connect failure)' >&2\nexit 1\n")  # fmt: skip
    context = JobContext(
        executor="slurm", job_id="4242", array_index=None, restart_count=0, host="node1", pid=1,
        global_rank=0, world_size=1, started_at=NOW - 45,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="trm_cluster.core.job_context"):
        assert context.classify(StopRequest(signal.SIGUSR2, NOW), DELAY_S, limit_s) == reason
    assert "scontrol gave no answer for job 4242" in caplog.text


def _without(line: str, field: str) -> str:
    return " ".join(token for token in line.split() if not token.startswith(f"{field}="))


WARNING_LINE = job_line("RUNNING", "None", 78)  # the time-limit warning (see above)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        # a PreemptTime that says "none" in another way, or no such field (another Slurm version), is no
        # preemption: the end time decides
        (WARNING_LINE.replace("PreemptTime=None", "PreemptTime=Unknown"), "timeout"),
        (WARNING_LINE.replace("PreemptTime=None", "PreemptTime="), "timeout"),
        (_without(WARNING_LINE, "PreemptTime"), "timeout"),
        # no end time to judge by: a USR2 is a preemption (never spends the budget)
        (_without(_without(WARNING_LINE, "PreemptTime"), "EndTime"), "preempted"),
        (WARNING_LINE.replace(f"EndTime={slurm_time(78)}", "EndTime=Unknown"), "preempted"),
        # the edge: an end exactly the signal delay plus Slurm's 60 s slack away is still the time limit's
        (job_line("RUNNING", "None", DELAY_S + 60), "timeout"),
        (job_line("RUNNING", "None", DELAY_S + 61), "preempted"),
    ],
)
def test_missing_or_unknown_times_in_the_line_and_the_edge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, reason: str
) -> None:
    (tmp_path / "job.txt").write_text(line + "\n")
    install_scontrol(tmp_path, monkeypatch, f'cat "{tmp_path}/job.txt"\n')
    assert classify(signal.SIGUSR2) == reason


def test_the_fields_of_the_line_keep_values_that_hold_an_equals_sign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "job.txt").write_text(job_line("RUNNING", "None", 78) + "\n")
    install_scontrol(
        tmp_path, monkeypatch, f'[ "$*" = "show job -o 4242" ] || exit 2\ncat "{tmp_path}/job.txt"\n'
    )
    fields = slurm_job_fields("4242")
    assert (
        fields is not None and fields["TRES"] == "cpu=1,node=1,billing=1" and fields["JobState"] == "RUNNING"
    )
    assert fields["Power"] == "" and slurm_job_fields("4343") is None  # scontrol fails: no fields


LOCAL_TASK = {  # what submitit's local executor gives task 1 of 2 (submitit/local/local.py)
    "SUBMITIT_EXECUTOR": "local",
    "SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1",
    "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
    "SUBMITIT_LOCAL_TIMEOUT_S": "300", "SUBMITIT_LOCAL_SIGNAL_DELAY_S": "30",
}  # fmt: skip


@pytest.fixture
def no_scheduler(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in [k for k in os.environ if k.startswith(("SUBMITIT_", "SLURM_"))]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_a_local_task_knows_its_rank_array_index_and_restart(no_scheduler: pytest.MonkeyPatch) -> None:
    for key, value in {**LOCAL_TASK, "SLURM_ARRAY_TASK_ID": "3", "SLURM_RESTART_COUNT": "2"}.items():
        no_scheduler.setenv(key, value)
    before = time.time()
    context = JobContext.detect()
    assert _booted_at() <= context.started_at < before  # this process started before the test did
    assert (context.executor, context.job_id, context.global_rank, context.world_size) == (
        "local",
        "4242",
        1,
        2,
    )
    assert (context.local_rank, context.array_index, context.restart_count) == (1, 3, 2)
    assert (context.host, context.pid, context.is_rank_zero) == (socket.gethostname(), os.getpid(), False)


def test_a_process_called_directly_is_its_own_job(no_scheduler: pytest.MonkeyPatch) -> None:
    no_scheduler.setenv("SLURM_RESTART_COUNT", "")  # set but empty: no restart
    before = time.time()
    context = JobContext.detect()
    assert _booted_at() <= context.started_at < before
    assert (context.executor, context.job_id, context.global_rank, context.world_size) == (
        "process",
        str(os.getpid()),
        0,
        1,
    )
    assert (context.local_rank, context.array_index, context.restart_count, context.is_rank_zero) == (
        0, None, 0, True
    )  # fmt: skip
    assert context.classify(StopRequest(signal.SIGUSR2, NOW), DELAY_S) == "preempted"  # no scheduler to ask


def _booted_at() -> float:
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])


def test_a_debug_job_is_its_own_rank_zero_and_its_stop_a_preemption(no_scheduler: pytest.MonkeyPatch) -> None:
    no_scheduler.setenv("SUBMITIT_EXECUTOR", "debug")
    no_scheduler.setenv("SUBMITIT_DEBUG_JOB_ID", "777")
    context = JobContext.detect()
    assert (context.executor, context.job_id, context.global_rank, context.world_size) == (
        "debug",
        "777",
        0,
        1,
    )
    assert context.classify(StopRequest(signal.SIGUSR2, NOW), DELAY_S) == "preempted"


@pytest.mark.parametrize(
    ("names", "executor"),
    [
        ((), "process"),
        (("SLURM_JOB_ID",), "process"),  # an sbatch script of the user's own runs the job directly
        (("SUBMITIT_FOLDER",), "process"),
        (("SLURM_JOB_ID", "SUBMITIT_FOLDER"), "slurm"),
        (("SUBMITIT_LOCAL_JOB_ID", "SUBMITIT_FOLDER"), "local"),
        (("SUBMITIT_DEBUG_JOB_ID", "SUBMITIT_LOCAL_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_FOLDER"), "debug"),
    ],
)
def test_the_executor_is_told_by_the_variables_submitit_sets(
    no_scheduler: pytest.MonkeyPatch, names: tuple[str, ...], executor: str
) -> None:
    for name in names:
        no_scheduler.setenv(name, "1")
    assert _executor_kind() == executor


@pytest.mark.parametrize(
    ("after_s", "environment", "reason"),
    [  # timeout 300 s, signal 30 s before it, 2 s of slack for imports: a timeout from 268 s on
        (267.5, LOCAL_TASK, "preempted"),
        (268.0, LOCAL_TASK, "timeout"),
        (10_000.0, {}, "preempted"),  # no timeout known: never a timeout
        (297.5, {"SUBMITIT_LOCAL_TIMEOUT_S": "300"}, "preempted"),  # no delay known: signalled at the limit
        (298.0, {"SUBMITIT_LOCAL_TIMEOUT_S": "300"}, "timeout"),
    ],
)
def test_a_local_stop_is_a_timeout_from_the_signal_time_on(
    no_scheduler: pytest.MonkeyPatch, after_s: float, environment: dict[str, str], reason: str
) -> None:
    for key, value in environment.items():
        no_scheduler.setenv(key, value)
    context = JobContext(
        executor="local", job_id="4242", array_index=None, restart_count=0, host="node1", pid=1,
        global_rank=0, world_size=1, started_at=NOW,
    )  # fmt: skip
    assert context.classify(StopRequest(signal.SIGUSR2, NOW + after_s), DELAY_S) == reason


CHILD = """
import sys, time
first_line = time.time()
while time.time() < first_line + 0.3:  # a gap: the start must come from /proc, not from "now"
    pass
from trm_cluster.core.job_context import JobContext
print(first_line, JobContext.detect().started_at)
"""


def test_a_process_knows_when_it_started(no_scheduler: pytest.MonkeyPatch) -> None:
    """The local executor times its signal from the task's start, and imports take seconds: the start is
    the process's own (from /proc), before its first line ran, not the moment it asked."""
    before = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    first_line, started_at = map(float, out.split())
    assert before - 0.05 <= started_at <= first_line + 0.05  # /proc counts in 10 ms clock ticks
