"""Sharded state (an FSDP2 model, its optimizer) saved and loaded through torch.distributed.checkpoint.

No rank holds a sharded model's full weights, so no rank can write it alone: every rank writes its own
shards into one DCP directory (``step_N.dcp/``, ``__R_0.distcp`` per rank, then ``.metadata``), and a
load reads what each rank's current shards need, from however many ranks wrote them: a resume at another
world size reshards. The rest of the step (RNG streams, per-rank parts, loaders, schedulers, the W&B
window and journal) stays in the step's ``.pt`` files, as for replicated state.

A registered module is sharded when any of its parameters is a ``DTensor``; a registered optimizer is
when its parameters belong to a sharded module. Their state is taken with DCP's own
``get_model_state_dict``/``get_optimizer_state_dict`` (keys by parameter name, values as the shards),
and put back with the ``set_`` pair, so what is saved is what DCP knows how to reshard.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from trm_cluster.rundir.atomic import fsync_directory
from trm_cluster.rundir.checkpoints import sha256_of

METADATA = ".metadata"
"""DCP writes it last, on the coordinating rank: a directory without it is incomplete."""


def sharded_name(step: int) -> str:
    """``step_000000200.dcp``: the step's DCP directory, beside its ``.pt`` files."""
    return f"step_{step:09d}.dcp"


def is_sharded_module(obj: Any) -> bool:
    """A module with ``DTensor`` parameters. DTensor (and DCP) are imported only where a loop shards: a
    process that never imported ``torch.distributed.tensor`` has no DTensor, and pays nothing here."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is None or not isinstance(obj, torch.nn.Module):
        return False
    return any(isinstance(p, dtensor.DTensor) for p in obj.parameters())


def _owner(
    optimizer: torch.optim.Optimizer, modules: Mapping[str, torch.nn.Module]
) -> torch.nn.Module | None:
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return next((m for m in modules.values() if params & {id(p) for p in m.parameters()}), None)


class ShardedState:
    """The sharded objects of one loop, by name: saved to and loaded from one DCP directory per step."""

    def __init__(self, objects: Mapping[str, Any]) -> None:
        self.modules = {name: obj for name, obj in objects.items() if is_sharded_module(obj)}
        self.optimizers: dict[str, tuple[torch.optim.Optimizer, torch.nn.Module]] = {}
        for name, obj in objects.items():
            if isinstance(obj, torch.optim.Optimizer) and (owner := _owner(obj, self.modules)) is not None:
                self.optimizers[name] = (obj, owner)

    @property
    def names(self) -> set[str]:
        return {*self.modules, *self.optimizers}

    def __bool__(self) -> bool:
        return bool(self.modules)

    def state_dict(self) -> dict[str, Any]:
        """This rank's shards, by registered name (every rank calls it at the same step)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state: dict[str, Any] = {name: get_model_state_dict(module) for name, module in self.modules.items()}
        for name, (optimizer, owner) in self.optimizers.items():
            state[name] = get_optimizer_state_dict(owner, optimizer)
        return state

    def load(self, directory: Path, process_group: Any = None) -> None:
        """Read this rank's shards from ``directory`` (written by any number of ranks) into the objects."""
        state = self.state_dict()  # the current shards' layout: what DCP fills in, resharded
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
        from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

        dcp_load(state, checkpoint_id=directory, process_group=process_group)
        for name, module in self.modules.items():
            set_model_state_dict(module, state[name])
        for name, (optimizer, owner) in self.optimizers.items():
            set_optimizer_state_dict(owner, optimizer, state[name])


def save_sharded(state: Mapping[str, Any], directory: Path, process_group: Any = None) -> None:
    """Write every rank's shards into ``directory`` (collective), each file fsynced by DCP's writer."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    dcp_save(
        dict(state), storage_writer=FileSystemWriter(directory, sync_files=True), process_group=process_group
    )


def save_sharded_in_background(
    state: Mapping[str, Any], directory: Path, process_group: Any = None
) -> Future[Any]:
    """The same, written by DCP's own thread: the shards are copied (staged) before this returns, so the
    loop may change them at once; the future is done when every rank's files are written."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save

    writer = FileSystemWriter(directory, sync_files=True)
    future = dcp_async_save(dict(state), storage_writer=writer, process_group=process_group)
    assert isinstance(future, Future), "an AsyncSaveResponse comes only with an async stager of one's own"
    return future


def sharded_files(directory: Path, rank: int) -> list[dict[str, Any]]:
    """This rank's files of a written step as manifest parts (rank 0: ``.metadata`` too), each with
    its sha256; rank 0 also makes the directory's entries durable."""
    mine = sorted(directory.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        mine.append(directory / METADATA)
        fsync_directory(directory)
    return [sharded_part(path, rank, directory.parent.parent) for path in mine]


def sharded_part(path: Path, rank: int, run_dir: Path) -> dict[str, Any]:
    """A DCP file as the manifest records it beside the step's ``.pt`` parts (``sharded``: not a rank's
    ``.pt`` part; checked like one at the load)."""
    file = str(path.relative_to(run_dir))
    return {
        "rank": rank,
        "file": file,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "sharded": True,
    }


def read_full(directory: Path) -> dict[str, Any]:
    """The full (unsharded) state a step's DCP directory holds, read in this one process without a
    process group: for comparing runs (the doctor, tests), never for a resume."""
    with tempfile.TemporaryDirectory() as scratch:
        whole = Path(scratch) / "full.pt"
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(directory, whole)
        state: dict[str, Any] = torch.load(whole, map_location="cpu", weights_only=True)
    return state
