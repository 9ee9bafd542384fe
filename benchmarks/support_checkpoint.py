"""The newest published checkpoint of a run, loaded as the job loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trm_cluster.rundir.manifest import RunManifest


def newest_payload(run_dir: Path) -> dict[str, Any]:
    record = RunManifest(run_dir).read().checkpoints[-1]
    payload: dict[str, Any] = torch.load(run_dir / record.file, map_location="cpu", weights_only=True)
    return payload
