"""RNG capture and restore, so a resumed process draws the same random numbers as an unbroken one.

Every state is converted to tensors and plain values, because checkpoints are loaded with
``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

try:
    import numpy as np
except ImportError:  # numpy is optional for torch; without it there is no numpy RNG to keep.
    np = None  # type: ignore[assignment]


def use_deterministic_kernels() -> None:
    """What an exact continuation on CUDA needs: no non-deterministic kernels, no autotuning, and a fixed
    cuBLAS workspace (the variable only takes effect if CUDA is not initialised yet: set it early)."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    if np is not None:
        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda", [])
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            raise RuntimeError(
                f"checkpoint holds RNG states for {len(cuda_states)} CUDA devices, this process sees "
                f"{torch.cuda.device_count()}: an exact resume needs the same devices"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    if np is not None and "numpy" in state:
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))


def rng_fingerprint() -> str:
    """A digest of the global python, numpy and torch CPU streams: equal iff nothing drew from them."""
    import hashlib

    digest = hashlib.sha256(repr(random.getstate()).encode())
    digest.update(torch.get_rng_state().numpy().tobytes())
    if np is not None:
        _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        digest.update(np.asarray(keys).tobytes() + repr((pos, has_gauss, cached)).encode())
    return digest.hexdigest()


def derived_seed(run_uid: str, step: int, rank: int) -> int:
    """A seed for a rank whose saved streams cannot be used (the number of ranks changed)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{run_uid}:{step}:{rank}".encode()).digest()[:8], "little") % 2**63
