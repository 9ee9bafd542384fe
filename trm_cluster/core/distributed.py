"""torch.distributed from the scheduler's environment, and the collective decisions of a run's ranks.

One process per task (Slurm's ``--ntasks-per-node``, the local executor's ``tasks_per_node``). The
process group comes from submitit's :class:`~submitit.helpers.TorchDistributedEnvironment` (master
address, and a port derived from the job id on Slurm; the local executor's controller sets a free one),
without its CUDA_VISIBLE_DEVICES rewrite: where Slurm binds GPUs, every task may see all of the node's
devices, so each picks its own by local rank. NCCL on CUDA, gloo on the CPU.

A signal reaches ranks at different moments, or not at all: :meth:`Ranks.agree` makes every rank see
the same answer at every step boundary (an all-reduce of one flag), so all stop after the same step.
Every collective is bounded (``TRM_CLUSTER_COLLECTIVE_TIMEOUT_S``): a dead or stalled rank ends the
others with an error instead of a hang.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import socket
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")

COLLECTIVE_TIMEOUT_ENV = "TRM_CLUSTER_COLLECTIVE_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
"""Longer than the slowest save; a rank that died is usually seen at once (its sockets close)."""


NCCL_WATCHDOG_DEFAULTS = {"TORCH_NCCL_TRACE_BUFFER_SIZE": "2000", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
"""torch's own NCCL watchdog, on CUDA: keep the last collectives in its flight recorder and dump them when a
collective times out (the dump needs the buffer). ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` keeps torch's
default (3: the process torn down on an NCCL error), so a dead peer ends the task instead of hanging it."""


def set_nccl_watchdog_defaults(environ: MutableMapping[str, str]) -> None:
    """Where the user has not set them: :data:`NCCL_WATCHDOG_DEFAULTS` (before the NCCL group starts)."""
    for key, value in NCCL_WATCHDOG_DEFAULTS.items():
        environ.setdefault(key, value)


def collective_timeout_s() -> float:
    raw = os.environ.get(COLLECTIVE_TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_COLLECTIVE_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        log.warning("%s=%r is not a positive number of seconds; using %.0f", COLLECTIVE_TIMEOUT_ENV, raw,
                    DEFAULT_COLLECTIVE_TIMEOUT_S)  # fmt: skip
        return DEFAULT_COLLECTIVE_TIMEOUT_S
    return value


def master_address(node: str) -> str:
    """Where rank 0 listens: the first node's name when it resolves, else Slurm's ``NodeAddr`` for it.

    submitit takes the name from SLURM_JOB_NODELIST, but a Slurm node name need not be a host name
    (``NodeName=n1 NodeAddr=10.0.0.7``; two node names on one host): then every rank would retry a
    name that cannot resolve until the collective timeout.
    """
    try:
        socket.getaddrinfo(node, None)
        return node
    except (socket.gaierror, UnicodeError):
        pass
    try:
        shown = subprocess.run(
            ["scontrol", "show", "node", "-o", node], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("master node %r does not resolve and scontrol failed: %s", node, error)
        return node
    found = re.search(r"\bNodeAddr=(\S+)", shown.stdout)
    if not found:
        log.warning("master node %r does not resolve and Slurm has no NodeAddr for it", node)
        return node
    log.info("master node %r does not resolve: using its Slurm NodeAddr %s", node, found.group(1))
    return found.group(1)


@dataclass
class Ranks:
    """This process's place among the run's processes; collectives are no-ops for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    control: Any = None
    """The group of the control collectives (stop flag, digests): gloo on the CPU, also beside NCCL, so
    the per-step stop check never waits for the GPU's queue."""
    background: Any = None
    """The group of the background savers' collectives (gloo): they run on the writer thread, beside the
    training thread's, and two threads' collectives on one group could pair up wrongly."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, rank: int, world_size: int, local_rank: int) -> Ranks:
        """Join (or create) the process group of a multi-task job; a single task needs none."""
        if world_size <= 1:
            return cls()
        timeout = datetime.timedelta(seconds=collective_timeout_s())
        if dist.is_initialized():  # the script's own group: every rank opens its session, so all join
            control = (
                dist.new_group(backend="gloo", timeout=timeout) if dist.get_backend() == "nccl" else None
            )
            background = dist.new_group(backend="gloo", timeout=timeout)
            rank, world_size = dist.get_rank(), dist.get_world_size()
            return cls(rank, world_size, local_rank, control=control, background=background)
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )
        os.environ["MASTER_ADDR"] = master_address(env.master_addr)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            set_nccl_watchdog_defaults(os.environ)
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
        control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
        background = dist.new_group(backend="gloo", timeout=timeout)
        return cls(rank, world_size, local_rank, owns_group=True, control=control, background=background)

    def for_background_saves(self) -> Ranks:
        """These ranks as the writer thread sees them: the same places, its own group, no ownership."""
        return dataclasses.replace(self, owns_group=False, control=self.background)

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says True (one all-reduce of one byte-sized value)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def agreed_request(self, request: T | None) -> tuple[bool, T | None]:
        """Whether any rank holds a request (the same answer on every rank, at the same boundary), and the
        request this rank goes on with: rank 0 gets another rank's when it has none (it classifies)."""
        if not self.agree(request is not None):
            return False, request
        if self.distributed:
            requests = [r for r in self.gather(request) if r is not None]
            if self.is_main and request is None:
                request = requests[0]
        return True, request

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on rank 0 (others get an empty list)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size if self.is_main else []
        dist.gather_object(obj, gathered if self.is_main else None, dst=0, group=self.control)
        return gathered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
