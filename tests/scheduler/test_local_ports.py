"""The local executor's tasks meet on a master port that was free, outside the kernel's ephemeral range."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest

from trm_cluster.scheduler.executors import ExecutorOptions, make_executor
from trm_cluster.scheduler.local_controller import ephemeral_ports, free_master_port


def test_a_port_held_by_a_listener_is_not_chosen() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("", 0))
        held.listen()
        busy = held.getsockname()[1]
        chosen = {free_master_port([busy, busy + 1], random.Random(seed)) for seed in range(8)}
    assert chosen == {busy + 1}


def two_tasks_master_ports(folder: Path) -> list[str | None]:
    executor = make_executor("local", ExecutorOptions(executor="local", time_min=5, tasks_per_node=2), folder)
    return list(executor.submit(os.getenv, "MASTER_PORT").results())


def test_two_local_tasks_share_a_port_below_the_ephemeral_range(tmp_path: Path) -> None:
    ports = two_tasks_master_ports(tmp_path / "logs")
    assert ports[0] is not None and ports[0] == ports[1]
    assert 20000 <= int(ports[0]) < ephemeral_ports().start


def test_a_master_port_the_user_set_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29517")
    assert two_tasks_master_ports(tmp_path / "logs") == ["29517", "29517"]
