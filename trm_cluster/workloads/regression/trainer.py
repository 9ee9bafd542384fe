"""The regression example's trainer (``config.py`` has its settings): model, optimizer,
LR schedule, EMA weights, an AMP grad scaler, a curriculum and a DataLoader whose position is saved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from trm_cluster.core.signals import ignore_stop_signals
from trm_cluster.core.workload import TrainContext
from trm_cluster.workloads.regression.config import RegressionConfig


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start mid-epoch: its position is (epoch, offset)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch, self.offset = 0, 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        yield from order[self.offset :]

    def __len__(self) -> int:
        return self.size - self.offset


class RegressionTrainer:
    def __init__(self, config: RegressionConfig, context: TrainContext) -> None:
        self.config = config
        generator = torch.Generator().manual_seed(context.seed)
        inputs = torch.randn(config.dataset_size, config.features, generator=generator)
        true_weights = torch.randn(config.features, 1, generator=generator)
        self.dataset = TensorDataset(inputs, inputs @ true_weights)
        self.sampler = EpochSampler(config.dataset_size, context.seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = nn.Sequential(
            nn.Linear(config.features, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1)
        ).to(self.device)
        # Several ranks: each trains its share of every global batch; DDP averages the gradients.
        self.rank, self.world_size = context.rank, context.world_size
        self.forward: nn.Module = self.model
        if context.world_size > 1:
            self.forward = nn.parallel.DistributedDataParallel(self.model)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr)
        warmup = max(config.warmup_steps, 1)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")
        self._batches: Iterator[list[torch.Tensor]] | None = None

    def _next_batch(self) -> list[torch.Tensor]:
        while True:
            if self._batches is None:
                loader = DataLoader(
                    self.dataset,
                    batch_size=self.config.batch_size,
                    sampler=self.sampler,
                    num_workers=self.config.num_workers,
                    worker_init_fn=ignore_stop_signals,
                    # Without its own generator, every new iterator draws a seed from the GLOBAL torch
                    # RNG, so a resume (one extra iterator) would shift all later random numbers.
                    generator=torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch),
                )
                self._batches = iter(loader)
            batch = next(self._batches, None)
            if batch is not None:
                self.sampler.offset += len(batch[0])
                return list(batch)
            self.sampler.epoch, self.sampler.offset, self._batches = self.sampler.epoch + 1, 0, None

    def noise(self, step: int) -> float:
        stages = self.config.noise_by_stage
        return stages[min(step // max(self.config.stage_steps, 1), len(stages) - 1)]

    def train_step(self, step: int) -> Mapping[str, float]:
        if step == self.config.fail_at_step:
            marker = Path(self.config.fail_once_marker) if self.config.fail_once_marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.touch()
                raise RuntimeError(f"rehearsed failure at step {step}")
        inputs, targets = (t[self.rank :: self.world_size].to(self.device) for t in self._next_batch())
        noisy = targets + self.noise(step) * torch.randn_like(targets)  # global RNG: restored by the job
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            loss = nn.functional.mse_loss(self.forward(inputs), noisy)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.ema.update_parameters(self.model)
        if self.config.step_delay_s:
            time.sleep(self.config.step_delay_s)
        return {
            "loss": float(loss.detach()),
            "lr": float(self.schedule.get_last_lr()[0]),
            "noise": self.noise(step),
        }

    def evaluate(self, step: int) -> Mapping[str, float]:
        if self.config.eval_delay_s:
            time.sleep(self.config.eval_delay_s)
        inputs, targets = self.dataset.tensors
        with torch.no_grad():
            loss = nn.functional.mse_loss(self.ema(inputs.to(self.device)), targets.to(self.device))
        return {"ema_mse": float(loss)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": {"epoch": self.sampler.epoch, "offset": self.sampler.offset},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.epoch, self.sampler.offset = state["data"]["epoch"], state["data"]["offset"]
        self._batches = None  # the next batch comes from the restored position
