"""What the doctor compares: a run's checkpoints read back from its manifest.

torch is imported when the first checkpoint is loaded, not with this module: the doctor answers a bad
request before the seconds torch takes (doctor/runs.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trm_cluster.doctor.errors import Untestable
from trm_cluster.rundir.manifest import RunManifest


class Checkpoints(Mapping[int, Mapping[str, Any]]):
    """A run's checkpoints by step, each verified against its manifest digest and loaded when asked."""

    def __init__(self, run_dir: Path, label: str) -> None:
        self.run_dir, self.label = run_dir, label
        self.records = {c.step: c for c in RunManifest(run_dir).read().checkpoints}
        self._cached: tuple[int, Mapping[str, Any]] | None = None

    def require(self, steps: range) -> None:
        missing = [s for s in steps if s not in self.records]
        if missing:
            raise Untestable(
                f"{self.label} left no checkpoint of step(s) {_ranges(missing)} (it holds "
                f"{_ranges(sorted(self.records)) or 'none'}): the doctor asks for one after every step "
                "(checkpoint_every=1); does the loop override it?"
            )

    def __getitem__(self, step: int) -> Mapping[str, Any]:
        if self._cached is not None and self._cached[0] == step:
            return self._cached[1]
        import torch  # here, not at the top: see the module's docstring

        from trm_cluster.rundir.checkpoints import sha256_of

        record = self.records[step]
        path = self.run_dir / record.file
        if not path.is_file() or path.stat().st_size != record.bytes or sha256_of(path) != record.sha256:
            raise Untestable(f"{self.label}: checkpoint {record.file} is missing or fails its digest")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        sharded = [part["file"] for part in record.parts if part.get("sharded")]
        if sharded:  # a sharded model and optimizer: compared as the full tensors their shards make up
            from trm_cluster.state.sharded import read_full

            payload["trainer"].update(read_full(self.run_dir / Path(sharded[0]).parent))
        self._cached = (step, payload)
        return payload  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.records))

    def __len__(self) -> int:
        return len(self.records)


def _ranges(steps: Sequence[int]) -> str:
    """``1-3, 7`` for ``[1, 2, 3, 7]``."""
    runs: list[list[int]] = []
    for step in steps:
        if runs and runs[-1][1] == step - 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
