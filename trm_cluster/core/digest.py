"""A content digest of model weights, comparable across runs, files and machines."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def weights_sha256(model_state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in sorted key order: each key, dtype, shape, then the raw bytes.

    Two runs whose weights are bit-identical get the same digest whatever file they were saved in.
    """
    digest = hashlib.sha256()
    for key in sorted(model_state):
        tensor = model_state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
