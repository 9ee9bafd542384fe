"""torch's own NCCL watchdog on CUDA (core/distributed.py): its flight recorder kept and dumped on a
collective timeout, unless the user chose otherwise. No GPU here: the defaults are checked as applied."""

from __future__ import annotations

from trm_cluster.core.distributed import NCCL_WATCHDOG_DEFAULTS, set_nccl_watchdog_defaults


def test_the_nccl_watchdog_dumps_on_timeout_unless_the_user_chose_otherwise() -> None:
    environ: dict[str, str] = {}
    set_nccl_watchdog_defaults(environ)
    assert environ == {"TORCH_NCCL_TRACE_BUFFER_SIZE": "2000", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    assert int(environ["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0  # the dump needs a buffer (torch's docs)
    chosen = {"TORCH_NCCL_DUMP_ON_TIMEOUT": "0", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    set_nccl_watchdog_defaults(chosen)
    assert chosen["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "0" and chosen["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in NCCL_WATCHDOG_DEFAULTS  # torch's default (3) is kept
