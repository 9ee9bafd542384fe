"""The peptide-trm job config: plain fields plus the nested curriculum, so it round-trips TOML/JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from trm_cluster.workloads.trm.curriculum import CurriculumConfig


@dataclass
class TRMConfig:
    """Model size, recursion, optimisation and evaluation settings of peptide-trm."""

    hidden: int = 64
    """Width of the recursive network."""
    layers: int = 2
    """Blocks in the one network (self-attention + SwiGLU, RMSNorm, no bias)."""
    heads: int = 4
    expansion: float = 2.5
    """SwiGLU hidden width as a multiple of ``hidden``."""
    n_latent: int = 2
    """n: latent updates ``z <- net(z, x + y)`` per recursion."""
    t_recursions: int = 2
    """T: recursions per supervision step (T-1 without gradients, one with)."""
    n_sup: int = 8
    """N_sup: most supervision steps a sample gets before it is replaced."""
    max_length: int = 9
    """Output positions (residues then end tokens); must hold the curriculum's longest peptide."""
    max_peaks: int = 64
    """Most intense peaks kept per spectrum."""
    fragment_tol: float = 0.02
    """Width (Da) of the Gaussian that matches a predicted fragment m/z to an observed peak."""
    precursor_tol: float = 0.05
    """Width (Da) of the match between a prefix mass and the precursor's residue mass."""

    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 20
    decay_steps: int = 0
    """Cosine decay from ``lr`` to ``lr * min_lr_ratio`` over this many steps after warm-up (0: constant;
    -1: until the run's last step, so ``--resume --steps 2N`` stretches the decay to the new end)."""
    min_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    halt_weight: float = 0.5
    """Weight of the halting BCE (target: the whole sequence is right)."""
    bf16: bool = True
    """bf16 autocast of the network on CUDA (ignored on the CPU)."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""

    eval_size: int = 256
    eval_seed: int = 20250
    eval_batch_size: int = 256

    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    def validate(self) -> None:
        for name in ("hidden", "layers", "heads", "n_latent", "t_recursions", "n_sup", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.max_length < 2 or self.max_peaks < 1:
            raise ValueError("max_length must be >= 2 and max_peaks >= 1")
        if self.decay_steps < -1:
            raise ValueError(f"decay_steps must be >= -1 (-1: to the run's end), got {self.decay_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
