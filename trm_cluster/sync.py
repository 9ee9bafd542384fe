"""``python -m trm_cluster.sync RUN_DIR``: upload a run's offline W&B segments in manifest order, once each
(why not plain ``wandb sync``, and how: ops/wandb_sync.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from trm_cluster.core.pipes import quiet_on_broken_pipe
from trm_cluster.core.process_exit import skip_final_collections
from trm_cluster.ops.wandb_sync import (
    SyncError,
    SyncFailed,
    header_only_notice,
    plan_sync,
    render_plan,
    sync_run,
)
from trm_cluster.rundir.manifest import ManifestError, RunManifest


@dataclass
class SyncArgs:
    """Upload a run's offline W&B segments to the server in manifest order, each exactly once."""

    run_dir: tyro.conf.Positional[Path]
    dry_run: bool = False
    """Print the ordered plan and upload nothing (needs no API key)."""
    entity: str | None = None
    """Upload to this W&B entity instead of the one recorded in the files."""
    project: str | None = None
    """Upload to this W&B project instead of the one recorded in the files."""


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    skip_final_collections()
    args = tyro.cli(SyncArgs, args=argv, prog="python -m trm_cluster.sync")
    try:
        data = RunManifest(args.run_dir).read()
        if data.wandb.mode == "online":
            print(f"run {data.name} logged to W&B online: nothing to sync")
            return 0
        plan = plan_sync(args.run_dir, data)
        if args.dry_run:
            print(render_plan(data, plan, args.entity, args.project))
            return 0
        if not any(p.pending for p in plan):
            for p in plan:
                if p.header_only:
                    print(header_only_notice(p))
            print(f"run {data.name}: nothing left to sync")
            return 0
        done = sync_run(args.run_dir, args.entity, args.project)
    except (ManifestError, SyncError) as error:
        print(f"trm-sync: error: {error}", file=sys.stderr)
        return 2
    except SyncFailed as error:
        if error.output.strip():
            print(error.output.rstrip(), file=sys.stderr)
        print(f"trm-sync: error: {error}", file=sys.stderr)
        return 1
    print(f"run {data.name}: synced {len(done)} segment(s) in manifest order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
