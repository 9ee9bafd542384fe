"""The Tiny Recursive Model: one small network applied again and again to an answer y and latent z.

One recursion is n updates ``z <- net(z, x + y)`` then ``y <- net(y, z)``; a supervision step is
T recursions, the first T-1 without gradients. The input x is recomputed from the current answer
(argmax of the logits of y) before every recursion, so the spectrum is read through features that
depend on what the model currently believes. There are no learned position embeddings: the
features carry the positional information, so a model trained on short peptides can be run with
more output positions on real spectra.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trm_cluster.workloads.trm.config import TRMConfig
from trm_cluster.workloads.trm.features import feature_size
from trm_cluster.workloads.trm.peptides import VOCAB

Featurizer = Callable[[Tensor], Tensor]
"""Maps an answer (B, L) of token ids to input features (B, L, F)."""


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=1e-6)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, expansion: float) -> None:
        super().__init__()
        inner = max(8, round(hidden * expansion / 8) * 8)
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        out: Tensor = self.down(F.silu(gate) * up)
        return out


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        rows, length, hidden = x.shape
        qkv = self.qkv(x).view(rows, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out: Tensor = self.out(mixed.transpose(1, 2).reshape(rows, length, hidden))
        return out


class Block(nn.Module):
    """Post-norm block as in TRM: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, hidden: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.mlp = SwiGLU(hidden, expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = rms_norm(x + self.attention(x))
        return rms_norm(x + self.mlp(x))


class RecursiveNet(nn.Module):
    """The one network; its two arguments are summed (input injection)."""

    def __init__(self, hidden: int, layers: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(hidden, heads, expansion) for _ in range(layers))

    def forward(self, state: Tensor, injection: Tensor) -> Tensor:
        h = state + injection
        for block in self.blocks:
            h = block(h)
        return h


class TinyRecursiveModel(nn.Module):
    y_init: Tensor
    z_init: Tensor

    def __init__(
        self,
        n_features: int,
        vocab_size: int,
        hidden: int,
        layers: int,
        heads: int,
        expansion: float,
        n_latent: int,
        t_recursions: int,
    ) -> None:
        super().__init__()
        self.n_latent = n_latent
        self.t_recursions = t_recursions
        self.embed = nn.Linear(n_features, hidden, bias=False)
        self.net = RecursiveNet(hidden, layers, heads, expansion)
        self.head = nn.Linear(hidden, vocab_size, bias=False)
        self.q_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)  # start by never halting early
        # Fixed (not trained) starting points of y and z, as in TRM; buffers so they are saved.
        self.register_buffer("y_init", torch.randn(hidden) * 0.5)
        self.register_buffer("z_init", torch.randn(hidden) * 0.5)

    def initial_state(self, rows: int, length: int) -> tuple[Tensor, Tensor]:
        return self.y_init.expand(rows, length, -1).clone(), self.z_init.expand(rows, length, -1).clone()

    def answer(self, y: Tensor) -> Tensor:
        """Current answer: argmax token per position."""
        logits: Tensor = self.head(y)
        return logits.argmax(dim=-1)

    def inject(self, features: Tensor) -> Tensor:
        """Embed features at unit RMS, the scale of y and z, so they are not drowned out."""
        return rms_norm(self.embed(features.float()))

    def recursion(self, x: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        for _ in range(self.n_latent):
            z = self.net(z, x + y)
        y = self.net(y, z)
        return y, z

    def supervision_step(
        self, y: Tensor, z: Tensor, featurize: Featurizer, autocast: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One deep recursion. Returns (y, z, logits, halt logit q, answer the last features used).

        ``y`` and ``z`` come in detached; gradients flow only through the last recursion.
        """
        device_type = y.device.type
        with torch.no_grad():
            for _ in range(self.t_recursions - 1):
                tokens = self.answer(y.float())
                x = self.inject(featurize(tokens))
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                    y, z = self.recursion(x, y, z)
            tokens = self.answer(y.float())
        x = self.inject(featurize(tokens))
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            y, z = self.recursion(x, y, z)
        y, z = y.float(), z.float()
        logits = self.head(y)
        q = self.q_head(y.mean(dim=1)).squeeze(-1)
        return y, z, logits, q, tokens


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(config: TRMConfig) -> TinyRecursiveModel:
    """The model a config describes (parameters drawn from the global torch RNG)."""
    return TinyRecursiveModel(
        n_features=feature_size(),
        vocab_size=len(VOCAB),
        hidden=config.hidden,
        layers=config.layers,
        heads=config.heads,
        expansion=config.expansion,
        n_latent=config.n_latent,
        t_recursions=config.t_recursions,
    )
