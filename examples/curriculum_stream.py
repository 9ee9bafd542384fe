"""A loop in the shape of the peptide-TRM researchers' own (docs/your-own-loop.md, "Your data pipeline"):
an infinite IterableDataset that draws Python's ``random`` in 4 loader workers, a curriculum whose every
stage makes a new iterator, its own EMA class, a cosine LR schedule and its own ``wandb.log`` calls. Exact
through any number of stops, within a stage and across stages. Adopting trm_cluster took 8 lines, marked
``# +`` (added) and ``# ~`` (changed), besides indenting the loop under the ``with``::

    python -m trm_cluster.submit --script examples/curriculum_stream.py --script-args --steps 300
    python -m trm_cluster.doctor --script examples/curriculum_stream.py
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from pathlib import Path

import torch
import wandb
from torch import nn
from torch.utils.data import IterableDataset  # ~ (was: import DataLoader, IterableDataset)
from torchdata.stateful_dataloader import StatefulDataLoader as DataLoader  # + (saves its position)

import trm_cluster  # +

FEATURES = 8


class SyntheticStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Endless samples; the curriculum sets how noisy they are. Each worker draws Python's ``random``,
    which torch seeds per worker from the loader's generator."""

    def __init__(self) -> None:
        self.noise = 0.0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            x = torch.tensor([random.gauss(0.0, 1.0) for _ in range(FEATURES)])
            y = torch.sin(x.sum(dim=0, keepdim=True)) + self.noise * random.gauss(0.0, 1.0)
            yield x, y


class Curriculum:
    """Stages at fixed steps; the loop makes a new iterator when the stage changes."""

    def __init__(self, boundaries: list[int], noises: list[float]) -> None:
        self.boundaries, self.noises, self.stage = boundaries, noises, 0

    def update(self, step: int) -> bool:
        stage = sum(step >= b for b in self.boundaries)
        changed, self.stage = stage != self.stage, stage
        return changed

    def apply(self, dataset: SyntheticStream) -> None:
        dataset.noise = self.noises[self.stage]


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("final_model.pt"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    dataset = SyntheticStream()
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))
    ema = EMA(model, decay=0.95)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    quarter = max(args.steps // 4, 1)
    curriculum = Curriculum([quarter, 2 * quarter, 3 * quarter], [0.0, 0.05, 0.1, 0.2])

    # ~ (was: wandb.init(project="peptide-trm", config=vars(args), tags=["curriculum"]))
    with trm_cluster.session(steps=args.steps, log_every=5, config=vars(args), tags=["curriculum"]) as run:
        run.restore(model=model, optimizer=optimizer, scheduler=schedule, ema=ema, data=loader,  # +
                    curriculum=trm_cluster.attributes(curriculum, "stage"))  # +  # fmt: skip
        curriculum.apply(dataset)  # + the stage the saved iterator was made in, before the first iter()
        batches = iter(loader)
        for step in run.steps():  # ~ (was: for step in range(args.steps):)
            if curriculum.update(step):  # a new stage: their loop makes a new iterator
                curriculum.apply(dataset)
                batches = iter(loader)
            inputs, targets = next(batches)
            loss = nn.functional.mse_loss(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            ema.update(model)
            wandb.log({"loss": loss.item(), "stage": curriculum.stage}, step=step)  # unchanged
        torch.save(ema.state_dict(), args.out)
        print(f"saved {args.out} at step {run.step}", flush=True)


if __name__ == "__main__":
    main()
