"""A researcher's own monolithic train.py, made preemptible with trm_cluster (docs/your-own-loop.md).

Its own argparse flags, a DataLoader with worker processes, EMA weights, a cosine LR schedule, a
diagnostic computed only when it will be logged, a validation every N steps, and a final evaluation
and "save the final model" after the loop. The lines that trm_cluster needs are marked ``# +``;
``# ~`` marks a line that changed. Run it under the scheduler, requeued as often as needed::

    python -m trm_cluster.submit --script examples/train_script.py --script-args --max-steps 400

or by itself (``python examples/train_script.py``), or prove it resumes exactly::

    python -m trm_cluster.doctor --script examples/train_script.py

``--plain-loader`` and ``--forget-scheduler`` plant the two commonest exactness bugs (for the doctor).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

import trm_cluster  # +


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--eval-interval", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("final_model.pt"))
    parser.add_argument("--sleep-per-step", type=float, default=0.0, help="to rehearse signals against")
    parser.add_argument("--plain-loader", action="store_true", help="planted bug: a plain DataLoader")
    parser.add_argument("--forget-scheduler", action="store_true", help="planted bug: scheduler not saved")
    return parser.parse_args()


def synthetic_regression(seed: int, size: int = 2048, features: int = 16) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, features, generator=generator)
    weights = torch.randn(features, 1, generator=generator)
    return TensorDataset(inputs, torch.sin(inputs @ weights))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset) -> float:
    inputs, targets = dataset.tensors
    return float(nn.functional.mse_loss(model(inputs), targets))


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    train_set, val_set = synthetic_regression(args.seed), synthetic_regression(args.seed + 1, size=256)
    loader_type = DataLoader if args.plain_loader else StatefulDataLoader
    loader = loader_type(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 1))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    with trm_cluster.session(steps=args.max_steps, log_every=args.log_interval) as run:  # +
        total = run.total_steps  # ~ (was: args.max_steps; a --resume --steps N changes it)
        warmup = 20
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))),
        )
        state = {"model": model, "optimizer": optimizer, "ema": ema, "data": loader}
        if not args.forget_scheduler:
            state["scheduler"] = schedule
        run.restore(**state)  # +
        batches = iter(loader)
        for step in run.steps():  # ~ (was: for step in range(args.max_steps):)
            batch = next(batches, None)
            if batch is None:  # a new epoch
                batches = iter(loader)
                batch = next(batches)
            inputs, targets = batch
            jitter = 1.0 + 0.02 * (random.random() - 0.5) + 0.02 * (float(np.random.rand()) - 0.5)
            noisy = targets * jitter + 0.05 * torch.randn_like(targets)
            loss = nn.functional.mse_loss(model(inputs), noisy)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            ema.update_parameters(model)
            time.sleep(args.sleep_per_step)
            run.log({"loss": loss.item(), "lr": schedule.get_last_lr()[0]})  # ~ (was: wandb.log)
            if run.will_log:  # a diagnostic worth computing only when it reaches W&B
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                run.log({"grad_norm": float(torch.nn.utils.get_total_norm(grads))})
            if (step + 1) % args.eval_interval == 0:
                run.log_now({"val/mse": evaluate(ema, val_set)})  # ~ (was: wandb.log)

        final = evaluate(ema, val_set)  # runs once, when the run is complete; never on a preemption
        run.log({"final/val_mse": final})  # ~ (was: wandb.log)
        torch.save(ema.module.state_dict(), args.out)
        print(f"final evaluation: val_mse={final:.6f}; saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
