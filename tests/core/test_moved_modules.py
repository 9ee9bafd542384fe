"""Paths that outlive the code that wrote them still resolve after the package's modules moved
(CHANGELOG.md): a job pickled by submitit before an upgrade, and a manifest's workload reference."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from trm_cluster.core.moved import current_module, current_reference
from trm_cluster.core.workload import is_script_workload, load_workload
from trm_cluster.scheduler.job import TrainingJob
from trm_cluster.scheduler.script_job import ScriptJob

UNPICKLE = """
import pickle, sys
job = pickle.loads(sys.stdin.buffer.read())
print(type(job).__module__, type(job).__name__, job.run_dir.name, job.wandb_resume, job.preempt_at)
"""


@pytest.mark.parametrize(
    ("job_type", "old"), [(TrainingJob, "trm_cluster.job"), (ScriptJob, "trm_cluster.script_job")]
)
def test_a_job_pickled_under_its_old_module_path_loads_in_a_fresh_interpreter(
    tmp_path: Path, job_type: type[TrainingJob], old: str
) -> None:
    job = job_type(tmp_path / "run", wandb_resume="must", preempt_at=(3, 9))
    today = pickle.dumps(job, protocol=0)  # text protocol: the class is named as "c<module>\n<name>\n"
    module = job_type.__module__.encode()
    assert b"c" + module + b"\n" in today
    before_the_move = today.replace(b"c" + module + b"\n", b"c" + old.encode() + b"\n")
    assert before_the_move != today
    # a fresh interpreter, as submitit's requeued process: only `import trm_cluster` has run
    out = subprocess.run(
        [sys.executable, "-c", UNPICKLE], input=before_the_move, capture_output=True, check=True
    ).stdout.decode()
    assert out.split() == [job_type.__module__, job_type.__name__, "run", "must", "(3,", "9)"]


def test_an_old_workload_reference_loads_todays_workload() -> None:
    old = "trm_cluster.trm.workload:PEPTIDE_TRM"
    assert current_reference(old) == "trm_cluster.workloads.trm.workload:PEPTIDE_TRM"
    assert load_workload(old) is load_workload(current_reference(old))
    assert load_workload("trm_cluster.examples.regression:REGRESSION").name == "regression"
    assert is_script_workload("trm_cluster.script_job:SCRIPT")
    assert is_script_workload("trm_cluster.scheduler.script_job:SCRIPT")


def test_only_moved_paths_are_rewritten() -> None:
    assert current_module("trm_cluster.jobs") is None  # a prefix of a moved name is not that name
    assert current_module("trm_cluster.trmx") is None
    assert current_module("trm_cluster.trm") == "trm_cluster.workloads.trm"
    assert current_reference("mypackage.trm_cluster.trm:W") == "mypackage.trm_cluster.trm:W"
    assert current_reference("trm_cluster.workloads.trm.workload:PEPTIDE_TRM").startswith(
        "trm_cluster.workloads"
    )
