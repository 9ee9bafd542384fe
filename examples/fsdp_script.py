"""Your own loop with a model sharded across ranks by FSDP2 (``fully_shard``): no rank holds the full
weights, so each checkpoint's model and optimizer are a torch.distributed.checkpoint directory that every
rank writes its shards into, and a resume on another number of ranks reshards them
(docs/distributed.md). Run it on two ranks, preemptible::

    python -m trm_cluster.submit --script examples/fsdp_script.py --tasks-per-node 2 --executor local --wait

The lines trm_cluster needs are marked ``# +``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

import trm_cluster  # +


def build(width: int) -> nn.Module:
    """The same weights on every rank (the seed), then each layer sharded, then the whole model."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def dump_full(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every full tensor of the model and the optimizer, written by rank 0 (collective: all ranks call)."""
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {
        "model": get_model_state_dict(model, options=full),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=full),
    }
    if dist.get_rank() == 0:
        torch.save(state, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--dump-restored", type=Path, help="write the full state as restored to this file")
    parser.add_argument(
        "--sleep-per-step", type=float, default=0.0, help="seconds (a slower step, for tests)"
    )
    args = parser.parse_args()

    with trm_cluster.session(steps=args.steps, log_every=5, checkpoint_every=10) as run:  # +
        if not dist.is_initialized():  # one task: no group was needed to run it, but FSDP2 shards over one
            store = Path(tempfile.mkdtemp()) / "store"
            dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        model = build(args.width)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        batches = torch.Generator().manual_seed(1000 + dist.get_rank())  # each rank its own data
        run.restore(model=model, optimizer=optimizer, data=trm_cluster.per_rank(batches))  # +
        if args.dump_restored:
            dump_full(model, optimizer, args.dump_restored)
        for _ in run.steps():  # +
            inputs = torch.randn(8, 16, generator=batches)
            targets = torch.sin(inputs.sum(dim=1, keepdim=True))
            loss = nn.functional.mse_loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.log({"loss": loss.item()})  # +
            time.sleep(args.sleep_per_step)


if __name__ == "__main__":
    main()
