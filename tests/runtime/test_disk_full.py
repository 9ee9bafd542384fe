"""A checkpoint write that fails for lack of space (RLIMIT_FSIZE set inside the job's process: every
write past the limit fails with EFBIG, as on a full disk) keeps the last good checkpoint and the manifest,
says so in the log and the manifest, and a stop afterwards still requeues from the last good checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from support import cli, manifest

LIMIT = (
    20_000  # bytes per file: the manifest (a few kB) fits, a checkpoint (~10 kB of weights + state) does not
)

SCRIPT = f"""
import json, os, resource, signal, sys, torch, trm_cluster
from pathlib import Path
marker, out, seen = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # a new process
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Linear(64, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
with trm_cluster.session(steps=160, checkpoint_every=50, log_every=10) as run:
    run.restore(model=model, optimizer=optimizer)
    first = not marker.exists()
    for step in run.steps():
        if first and step == 60:  # the disk fills up after checkpoint 50
            resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, resource.RLIM_INFINITY))
        if first and step == 110:  # after checkpoint 100 failed: what is on disk now
            run_dir = run.run_dir
            seen.write_text(json.dumps({{"manifest": json.loads((run_dir / "manifest.json").read_text()),
                                         "files": sorted(p.name for p in (run_dir / "checkpoints").iterdir())}}))
        if first and step == 120:  # a preemption, with the disk still full
            marker.touch()
            os.kill(os.getpid(), signal.SIGUSR2)
        x = torch.randn(8, 16)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({{"loss": loss.item()}})
torch.save(model.state_dict(), out)
"""


def test_a_full_disk_keeps_the_last_good_checkpoint_and_a_stop_still_requeues_from_it(workdir: Path) -> None:
    script = workdir / "train.py"
    script.write_text(SCRIPT)
    outputs = {}
    for name in ("reference", "run"):
        marker, seen = workdir / f"{name}.stopped", workdir / f"{name}.seen.json"
        if name == "reference":
            marker.touch()  # never fills the disk, never stopped
        # synchronous saves: the script looks at the manifest right after checkpoint 100's save returns (a
        # background write's failure is reported at the next save or at the stop, see test_async_checkpoint)
        result = cli("submit", "--script", str(script), "--executor", "debug", "--no-wandb", "--sync-checkpoints", "--run-dir",
                     str(workdir / name), "--", str(marker), str(workdir / f"{name}.pt"), str(seen),
                     cwd=workdir)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        outputs[name] = result
    run_dir = workdir / "run"

    # seen from inside the job right after checkpoint 100 failed: the manifest (readable, still naming
    # checkpoint 50 alone) and checkpoint 50's file intact; no half-written file of 100 left
    seen = json.loads((workdir / "run.seen.json").read_text())
    assert [c["step"] for c in seen["manifest"]["checkpoints"]] == [50]
    assert seen["files"] == ["step_000000050.pt"]
    assert (
        "checkpoint at step 100 not written: OSError: [Errno 27] File too large"
        in seen["manifest"]["segments"][0]["message"]
    )

    log = outputs["run"].stderr
    assert "checkpoint at step 100 not written ([Errno 27] File too large); the last good one is kept" in log
    assert "checkpoint at step 121 not written" in log  # the stop's own save failed too
    data = manifest(run_dir)
    first, second = data["segments"]
    assert (first["end_reason"], first["end_step"]) == ("preempted", 50)  # requeued from the last good one
    assert "checkpoint at step 121 not written" in first["message"]
    assert (second["start_step"], second["end_reason"], data["status"]) == (50, "completed", "completed")
    for record in data["checkpoints"]:
        blob = (run_dir / record["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == record["sha256"]
    reference, resumed = (torch.load(workdir / f"{n}.pt", weights_only=True) for n in ("reference", "run"))
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
