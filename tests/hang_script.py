"""A user's script that hangs at step HANG (``time.sleep`` for an hour), for the watchdog's tests
(tests/runtime/test_hangs.py, and on the real Slurm in tests/scheduler/test_slurm.py): in its first
attempt only (a marker file per rank), or in every attempt (``--always``); seeded, so that a run that hung
and one that never did can be compared bit for bit. The stuck frame is its line ``SLEEP_LINE``."""

from __future__ import annotations

STEPS, HANG, EVERY = 10, 7, 5  # the hang comes two steps after the checkpoint at step 5
SCRIPT = """
import argparse, os, random, time, numpy, torch, trm_cluster
parser = argparse.ArgumentParser()
parser.add_argument("--hang-at", type=int, default=-1)
parser.add_argument("--marker", default="")
parser.add_argument("--rank", type=int, default=-1)  # hang on this rank only (-1: every rank)
parser.add_argument("--always", action="store_true")
parser.add_argument("--final-eval-s", type=float, default=0.0)
args = parser.parse_args()
torch.manual_seed(0); random.seed(0); numpy.random.seed(0)  # noqa: E702
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
rank = int(os.environ.get("SUBMITIT_LOCAL_GLOBALID", os.environ.get("SLURM_PROCID", "0")))
with trm_cluster.session(steps=STEPS, checkpoint_every=EVERY, log_every=1) as run:
    run.restore(model=model, optimizer=optimizer)
    for step in run.steps():
        marker = f"{args.marker}.{rank}"
        if step == args.hang_at and args.rank in (-1, rank) and (args.always or not os.path.exists(marker)):
            open(marker, "w").close()
            time.sleep(3600)  # the hang: a collective waiting on a dead peer, a stuck file system, ...
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({"loss": loss.item()})
    time.sleep(args.final_eval_s)  # a slow final evaluation: after the loop, never watched
    print("after the loop at step", run.step, flush=True)
""".replace("STEPS", str(STEPS)).replace("EVERY", str(EVERY))
SLEEP_LINE = 20
"""The line of the script's ``time.sleep(3600)``: the frame a hung process's stack dump must show."""
