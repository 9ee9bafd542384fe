"""A new run directory: its manifest written once, with the W&B run id chosen before any ``wandb.init``.

All checks run before anything is written: a refused request leaves the disk as it was.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trm_cluster.core.wandb_options import WandbOptions, new_run_id, resolve_mode
from trm_cluster.core.workload import SCRIPT_WORKLOAD, is_script_workload
from trm_cluster.rundir.manifest import ManifestData, ManifestError, RunManifest, WandbInfo, config_hash


def create_run(
    run_dir: Path,
    name: str,
    workload: str,
    config: dict[str, Any],
    wandb: WandbOptions,
    max_requeues: int,
    launch: Mapping[str, Any],
) -> ManifestData:
    """Write the manifest of a new run, with its W&B run id chosen once, here, before any wandb.init."""
    if run_dir.exists() and any(run_dir.iterdir()):
        hint = (
            f"use --resume {run_dir}" if (run_dir / "manifest.json").exists() else "choose another --run-dir"
        )
        raise ManifestError(f"{run_dir} already exists and is not empty; {hint}")
    data = ManifestData(
        name=name,
        run_uid=secrets.token_hex(8),
        workload=workload,
        config=config,
        config_hash=config_hash(config),
        total_steps=int(config["run"].get("steps", 0)),
        wandb=WandbInfo.chosen(wandb, run_id=new_run_id(), mode=resolve_mode(wandb.mode)),
        max_requeues=max_requeues,
        launch=dict(launch),
    )
    RunManifest(run_dir).create(data)
    return data


def create_script_run(
    run_dir: Path,
    script: Path | None,
    script_args: list[str],
    run_flags: Mapping[str, Any],
    entry: str | None = None,
    name: str | None = None,
    wandb: WandbOptions | None = None,
    max_requeues: int = 20,
    launch: Mapping[str, Any] | None = None,
) -> ManifestData:
    """A run of a user's own script: ``config["run"]`` holds only the flags given explicitly (they win
    over what the script passes to ``session()``), ``config["script"]`` what to run and its arguments."""
    record = script_config(script, entry, script_args)
    stem = Path(record["path"]).stem if record["path"] else str(entry).partition(":")[0].rsplit(".", 1)[-1]
    if wandb is None:
        wandb = WandbOptions().resolved(default_project=stem)
    elif wandb.project is None:  # the script's stem, as submit --script gives
        wandb = dataclasses.replace(wandb, project=stem)
    config = {"run": dict(run_flags), "job": {}, "script": record}
    return create_run(
        run_dir,
        name or run_dir.name,
        SCRIPT_WORKLOAD,
        config,
        wandb,
        max_requeues,
        {"cwd": os.getcwd(), **(launch or {})},
    )


def is_script_run(run_dir: Path) -> bool:
    return is_script_workload(RunManifest(run_dir).read().workload)


def script_config(script: Path | None, entry: str | None, args: list[str]) -> dict[str, Any]:
    """The manifest's record of what to run: an absolute script path or a ``module:function``."""
    if (script is None) == (entry is None):
        raise ValueError("give exactly one of --script PATH and --entry MODULE:FUNCTION")
    if script is not None:
        path = script.expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"--script {script}: no such file")
        return {"path": str(path), "entry": None, "args": list(args)}
    assert entry is not None
    module, sep, function = entry.partition(":")
    if not sep or not module or not function:
        raise ValueError(f"--entry {entry!r} is not of the form 'package.module:function'")
    return {"path": None, "entry": entry, "args": list(args)}
