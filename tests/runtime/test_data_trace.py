"""The doctor's data trace (runtime/data_trace.py): what a loop was handed, batch by batch, through a
restore. In a fresh process, since the trace wraps the DataLoader classes for the whole process."""

from __future__ import annotations

import subprocess
import sys

from support import clean_env

SCRIPT = """
import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from trm_cluster.runtime.data_trace import trace_from_env

class Stream(torch.utils.data.IterableDataset):  # no state_dict: torchdata fast-forwards it on a restore
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return iter(torch.arange(worker, 1000, workers, dtype=torch.float32))

def loader():
    return StatefulDataLoader(Stream(), batch_size=2, num_workers=2)

trace = trace_from_env()
whole = iter(loader())
expected = []
for _ in range(5):
    next(whole)
    expected.append(trace.take())

first = loader()
it = iter(first)
for _ in range(3):
    next(it)
trace.take()
state = first.state_dict()
second = loader()
second.load_state_dict(state)  # fast-forwards through the real iterator: nothing reaches the trace
resumed = iter(second)
assert trace.take()["batches"] == 0  # the replayed batches were not handed to the loop
got = []
for _ in range(2):
    next(resumed)
    got.append(trace.take())
assert got == expected[3:], (got, expected[3:])
assert all(t["batches"] == 1 for t in got)
assert len({t["sha256"] for t in expected}) == 5  # each batch its own fingerprint
print("traced", len(got))
"""


def test_the_trace_counts_what_the_loop_was_handed_and_not_the_loaders_replay() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=clean_env(TRM_CLUSTER_TRACE_DATA="1"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "traced 2" in done.stdout


def test_without_the_doctor_nothing_is_wrapped() -> None:
    script = "from trm_cluster.runtime.data_trace import trace_from_env\nassert trace_from_env() is None\n"
    script += "import torch.utils.data as d\nassert d.DataLoader.__iter__.__module__ == 'torch.utils.data.dataloader'"
    done = subprocess.run([sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
