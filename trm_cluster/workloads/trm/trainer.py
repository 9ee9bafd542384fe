"""The peptide-trm Trainer: one deep-supervision step per optimizer step, with the carry as state.

Each row of the batch is a spectrum in the middle of its supervision steps. Its (y, z) are carried
detached from one optimizer step to the next; a row that halts (q > 0, or N_sup steps done) is
replaced by a fresh synthetic spectrum drawn from a generator seeded by (seed, step). So the data
position is a pure function of the step, and the carry (y, z, step counts, halted flags and the
rows' spectra and targets) is everything else an exact resume needs besides weights, EMA,
optimizer and LR-schedule position. The curriculum stage is recomputed from the step every time.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from trm_cluster.core.workload import TrainContext, dataclass_from_dict
from trm_cluster.workloads.trm.config import TRMConfig
from trm_cluster.workloads.trm.curriculum import CurriculumConfig, StageSettings, build_curriculum
from trm_cluster.workloads.trm.features import spectrum_features
from trm_cluster.workloads.trm.losses import supervision_loss
from trm_cluster.workloads.trm.metrics import batch_metrics, evaluation_set, predict
from trm_cluster.workloads.trm.model import build_model, count_parameters
from trm_cluster.workloads.trm.spectra import PAD_MZ, SpectrumBatch, generate_batch, step_generator

STATE_FORMAT = 1
TRAIN_STREAM = 1
_notices: set[str] = set()


def _notice_once(text: str) -> None:
    if text not in _notices:
        _notices.add(text)
        print(text, flush=True)


def pick_device(name: str) -> torch.device:
    """CUDA when asked for or available; otherwise the CPU, said once."""
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise RuntimeError("device = 'cuda' but CUDA is not available")
    _notice_once("peptide-trm: CUDA is not available, training on the CPU")
    return torch.device("cpu")


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up, then constant or cosine decay to ``lr * min_lr_ratio``."""

    lr: float
    warmup_steps: int
    decay_steps: int
    min_lr_ratio: float

    def at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.decay_steps <= 0:
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / self.decay_steps)
        ratio = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * ratio


@dataclass
class Carry:
    """What rows carry between supervision steps. All detached."""

    y: Tensor  # (B, L, H)
    z: Tensor  # (B, L, H)
    steps: Tensor  # (B,) supervision steps done on the row's current spectrum
    halted: Tensor  # (B,) replace the row before the next step
    data: SpectrumBatch

    def state_dict(self) -> dict[str, Any]:
        return {
            "y": self.y.detach().cpu().clone(),
            "z": self.z.detach().cpu().clone(),
            "steps": self.steps.cpu().clone(),
            "halted": self.halted.cpu().clone(),
            "data": self.data.state_dict(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: torch.device) -> Carry:
        return cls(
            y=state["y"].to(device),
            z=state["z"].to(device),
            steps=state["steps"].to(device),
            halted=state["halted"].to(device),
            data=SpectrumBatch.from_state(state["data"], device),
        )


def _cpu_copy(value: Any) -> Any:
    """A detached CPU copy of nested tensors/containers (checkpoints must not alias live tensors)."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_cpu_copy(item) for item in value)
    return value


class PeptideTRMTrainer:
    """Implements :class:`trm_cluster.core.workload.Trainer` (and ``Evaluates``) for peptide-trm."""

    def __init__(self, config: TRMConfig, context: TrainContext) -> None:
        config.validate()
        # Several ranks share each global batch: rank r trains rows r, r + W, r + 2W, ... of it.
        self.rank, self.world_size = context.rank, context.world_size
        if config.batch_size % context.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} must be a multiple of the number of ranks ({context.world_size})"
            )
        self.rows = config.batch_size // context.world_size
        self.config = config
        self.context = context
        self.device = pick_device(config.device)
        self.curriculum = build_curriculum(config.curriculum)
        for stage in self.curriculum.stages:
            stage.data.validate(config.max_length)
        self.model = build_model(config).to(self.device)
        self.ema_model = copy.deepcopy(self.model)
        self.ema_model.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
        )
        self.schedule = self._schedule(context.total_steps)
        self.autocast = config.bf16 and self.device.type == "cuda"
        self.data_seed = context.seed * 1_000_003  # every rank draws the same global batch
        self.step = 0
        self.last_lr = self.schedule.at(0)
        self.settings: StageSettings = self.curriculum.settings(0)
        self.carry = self._empty_carry()
        self._eval_batch: SpectrumBatch | None = None
        self.parameter_count = count_parameters(self.model)
        self._stale_carry = False

    # -- carry ----------------------------------------------------------------------------------

    def _schedule(self, total_steps: int) -> LRSchedule:
        """The LR schedule of the config; with ``decay_steps = -1`` it decays until ``total_steps``."""
        cfg = self.config
        decay = max(total_steps - cfg.warmup_steps, 1) if cfg.decay_steps == -1 else cfg.decay_steps
        return LRSchedule(cfg.lr, cfg.warmup_steps, decay, cfg.min_lr_ratio)

    def total_steps_changed(self, old: int, new: int) -> None:
        """``--resume --steps N``: the schedule is a function of the step and the config, rebuilt with the
        new total at every start; say what that means for this run's LR from here on."""
        if self.config.decay_steps == -1:
            what = (
                f"the cosine decay now ends at step {new} (decay_steps = -1); the LR jumps to the new curve"
            )
        elif self.config.decay_steps > 0:
            end = self.config.warmup_steps + self.config.decay_steps
            what = (f"the cosine decay keeps its horizon (ends at step {end}); pass --decay-steps -1 to "
                    "stretch it to the run's end")  # fmt: skip
        else:
            what = "the LR is constant after warm-up (decay_steps = 0): nothing to stretch"
        print(f"peptide-trm: total steps {old} -> {new}: {what}", flush=True)

    def _empty_carry(self) -> Carry:
        rows, length, peaks = self.rows, self.config.max_length, self.config.max_peaks
        y, z = self.model.initial_state(rows, length)
        device = self.device
        data = SpectrumBatch(
            mz=torch.full((rows, peaks), PAD_MZ, device=device),
            intensity=torch.zeros((rows, peaks), device=device),
            precursor_mass=torch.zeros(rows, device=device),
            precursor_charge=torch.full((rows,), 2, dtype=torch.int64, device=device),
            tokens=torch.zeros((rows, length), dtype=torch.int64, device=device),
            lengths=torch.zeros(rows, dtype=torch.int64, device=device),
        )
        steps = torch.zeros(rows, dtype=torch.int64, device=device)
        halted = torch.ones(rows, dtype=torch.bool, device=device)
        return Carry(y=y.detach(), z=z.detach(), steps=steps, halted=halted, data=data)

    def _refill(self, step: int) -> Carry:
        """Replace halted rows by fresh spectra of this step's stage."""
        carry = self.carry
        if not bool(carry.halted.any()):
            return carry
        cfg = self.config
        generator = step_generator(self.data_seed, step, stream=TRAIN_STREAM)
        fresh = generate_batch(self.settings.data, cfg.batch_size, cfg.max_length, cfg.max_peaks, generator)
        fresh = fresh.rows(slice(self.rank, None, self.world_size))  # this rank's share
        halted = carry.halted
        y0, z0 = self.model.initial_state(self.rows, cfg.max_length)
        row = halted.view(-1, 1, 1)
        return Carry(
            y=torch.where(row, y0, carry.y),
            z=torch.where(row, z0, carry.z),
            steps=torch.where(halted, torch.zeros_like(carry.steps), carry.steps),
            halted=torch.zeros_like(halted),
            data=carry.data.replace_rows(halted, fresh.to(self.device)),
        )

    # -- Trainer protocol -----------------------------------------------------------------------

    def train_step(self, step: int) -> Mapping[str, float]:
        started = time.perf_counter()
        cfg = self.config
        self.settings = settings = self.curriculum.settings(step)
        lr = self.schedule.at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        carry = self._refill(step)
        fresh_rows = int((carry.steps == 0).sum())
        data = carry.data
        evidence: list[Tensor] = []

        def featurize(tokens: Tensor) -> Tensor:
            features = spectrum_features(tokens, data, cfg.fragment_tol, cfg.precursor_tol)
            evidence.append(features.evidence)
            return features.x

        self.model.train()
        y, z, logits, q, _ = self.model.supervision_step(carry.y, carry.z, featurize, self.autocast)
        parts = supervision_loss(
            logits,
            q,
            data.tokens,
            evidence[-1],
            data.precursor_mass,
            halt_weight=cfg.halt_weight,
            spectrum_weight=settings.spectrum_weight,
            precursor_weight=settings.precursor_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        if self.world_size > 1:
            average_gradients(self.model, self.world_size)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._update_ema(step)

        steps = carry.steps + 1
        halted = (steps >= cfg.n_sup) | (q.detach() > 0)
        self.carry = Carry(y=y.detach(), z=z.detach(), steps=steps, halted=halted, data=data)
        self.step = step + 1
        self.last_lr = lr

        with torch.no_grad():
            predicted = logits.argmax(dim=-1)
            inside = torch.arange(cfg.max_length, device=self.device) < data.lengths.unsqueeze(1)
            residue_accuracy = ((predicted == data.tokens) & inside).sum() / inside.sum().clamp(min=1)
        elapsed = max(time.perf_counter() - started, 1e-9)
        return {
            "loss": float(parts.total.detach()),
            "loss_ce": float(parts.ce.detach()),
            "loss_halt": float(parts.halt.detach()),
            "loss_spectrum": float(parts.spectrum.detach()),
            "loss_precursor": float(parts.precursor.detach()),
            "spectrum_weight": settings.spectrum_weight,
            "precursor_weight": settings.precursor_weight,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "stage": float(settings.index),
            "residue_accuracy": float(residue_accuracy),
            "peptide_accuracy": float(parts.correct.float().mean()),
            "halted_fraction": float(halted.float().mean()),
            "fresh_rows": float(fresh_rows),
            "spectra_per_s": cfg.batch_size / elapsed,
            "step_time_s": elapsed,
            **(
                {"gpu_peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
                if self.device.type == "cuda"
                else {}
            ),
        }

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        # Short warm-up of the decay so early EMA weights are not dominated by the initialisation.
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        for ema, raw in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
            ema.lerp_(raw.detach(), 1.0 - decay)
        for ema_buffer, raw_buffer in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
            ema_buffer.copy_(raw_buffer)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "step": self.step,
            "data_seed": self.data_seed,
            "model": self.model.state_dict(),
            "ema": self.ema_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {**asdict(self.schedule), "step": self.step, "last_lr": self.last_lr},
            **({"carry": self.carry.state_dict()} if self.world_size == 1 else {}),
            "curriculum": {
                "config": asdict(self.config.curriculum),
                "stage": self.settings.index,
                "stage_name": self.settings.name,
            },
        }
        copied: dict[str, Any] = _cpu_copy(state)
        return copied

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported peptide-trm state format {state.get('format')!r}")
        cfg = self.config
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the current config's hyper-parameters win
            group["betas"] = (cfg.beta1, cfg.beta2)
            group["weight_decay"] = cfg.weight_decay
        self.step = int(state["step"])
        self.data_seed = int(state["data_seed"])
        self.last_lr = float(state["schedule"]["last_lr"])
        if "carry" in state:  # one rank; with several, each rank's carry is its own part
            self.carry = Carry.from_state(state["carry"], self.device)
        self._apply_curriculum_on_resume(state["curriculum"])

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own rows in flight, when several ranks share the batch (else in state_dict)."""
        return {"carry": self.carry.state_dict()} if self.world_size > 1 else {}

    def load_rank_state_dict(self, state: Mapping[str, Any]) -> None:
        if "carry" in state:
            self.carry = Carry.from_state(state["carry"], self.device)
            if self._stale_carry:  # drawn under a curriculum whose data no longer applies
                self.carry.halted = torch.ones_like(self.carry.halted)

    def _apply_curriculum_on_resume(self, saved: Mapping[str, Any]) -> None:
        """The current config's stage for the resumed step applies now, data and loss weights alike.

        Loss weights are looked up from the step at every train_step anyway. The rows in the
        carry were drawn under the saved curriculum; when its data settings for this step differ
        from the new one's, they are all marked halted so the next step draws fresh spectra.
        """
        saved_config = dataclass_from_dict(CurriculumConfig, saved["config"])
        old = build_curriculum(saved_config).settings(self.step)
        new = self.curriculum.settings(self.step)
        self.settings = new
        if saved_config == self.config.curriculum:
            return
        print(
            f"peptide-trm: curriculum changed on resume ({saved_config.name} -> "
            f"{self.config.curriculum.name}); step {self.step} now uses stage {new.index} "
            f"({new.name}), spectrum loss weight {new.spectrum_weight:.3f}",
            flush=True,
        )
        self._stale_carry = old.data != new.data
        if self._stale_carry:
            self.carry.halted = torch.ones_like(self.carry.halted)

    # -- evaluation -----------------------------------------------------------------------------

    def evaluation_batch(self) -> SpectrumBatch:
        if self._eval_batch is None:
            self._eval_batch = evaluation_set(self.config)
        return self._eval_batch

    def evaluate(self, step: int) -> Mapping[str, float]:
        """Metrics of the EMA weights with all N_sup steps on the fixed synthetic evaluation set."""
        cfg = self.config
        batch = self.evaluation_batch()
        tokens = predict(
            self.ema_model,
            batch,
            cfg.n_sup,
            cfg.fragment_tol,
            cfg.precursor_tol,
            cfg.max_length,
            batch_size=cfg.eval_batch_size,
            autocast=self.autocast,
        )
        return batch_metrics(tokens, batch)


def average_gradients(model: torch.nn.Module, world_size: int) -> None:
    """The mean of every rank's gradients, on every rank: one all-reduce of all of them, flattened.

    Not DDP: the recursion runs through ``supervision_step`` rather than ``forward`` and the initial
    states are used outside it (at refills), which DDP's forward-driven bookkeeping does not follow.
    """
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for param, grad in zip(params, grads, strict=True):
        count = grad.numel()
        param.grad = flat[offset : offset + count].view_as(grad).clone()
        offset += count


def build_trainer(config: TRMConfig, context: TrainContext) -> PeptideTRMTrainer:
    return PeptideTRMTrainer(config, context)
