"""The script's own config and tags (``session(config=..., tags=...)``), kept in the manifest for the run.

Why: a script that adopts the package drops its own ``wandb.init(config=..., tags=...)``; its
TrainingConfig and tags must still reach the one W&B run, and a resume whose script config differs
(``--resume -- --lr 1e-4``) must say so, like a changed flag does: each differing key is recorded as a
config change ``script.<key>`` at the resume step, which W&B's config then annotates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trm_cluster.core.errors import UsageError
from trm_cluster.rundir.manifest import ConfigChange, ManifestData, RunManifest, utc_now

PACKAGE_KEYS = ("run", "job", "script")
"""Top-level keys of the W&B config that hold the package's own settings (the manifest's config)."""
MAX_TAG_LENGTH = 64
"""W&B's limit on one tag."""


@dataclass(frozen=True)
class ScriptRecord:
    """What ``session(config=..., tags=...)`` was given, in the form the manifest stores."""

    config: dict[str, Any]
    tags: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.config and not self.tags


def script_record(config: Any = None, tags: Sequence[str] = ()) -> ScriptRecord:
    """Read ``session(config=..., tags=...)``: a dataclass, mapping or namespace, and a list of strings.

    Values that JSON cannot hold (a Path, an enum, a dtype) are kept as their text."""
    if config is None:
        raw: Mapping[str, Any] = {}
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        raw = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        raw = config
    elif isinstance(config, argparse.Namespace | types.SimpleNamespace):
        raw = vars(config)
    else:
        raise UsageError(
            f"session(config=...) takes a dataclass, a mapping or an argparse namespace, not {type(config).__name__}"
        )
    if not all(isinstance(key, str) for key in raw):
        raise UsageError("session(config=...): its keys must be strings")
    clash = sorted(set(raw) & set(PACKAGE_KEYS))
    if clash:
        raise UsageError(
            f"session(config=...): the key {', '.join(map(repr, clash))} is taken by the package's own settings "
            f"in the W&B config ({', '.join(PACKAGE_KEYS)}); rename or nest it"
        )
    if isinstance(tags, str):
        raise UsageError(f"session(tags=...) takes a list of strings, not the string {tags!r}")
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG_LENGTH:
            raise UsageError(
                f"session(tags=...): {tag!r} is not a tag (a non-empty string of at most 64 characters)"
            )
    return ScriptRecord(json.loads(json.dumps(dict(raw), default=str)), tuple(dict.fromkeys(tags)))


def record_script(manifest: RunManifest, record: ScriptRecord) -> None:
    """Keep the script's config and tags in the manifest: keys that differ from the previous process's
    are a config change at the resume step; new tags join the run's W&B tags."""
    if record.empty:
        return
    with manifest.update() as data:
        changes = script_changes(data.script_config, record.config) if data.script_config else {}
        if changes:
            data.config_changes.append(ConfigChange(at_step=data.step, time=utc_now(), changes=changes))
        if record.config:
            data.script_config = record.config
        data.wandb.tags = list(dict.fromkeys([*data.wandb.tags, *record.tags]))


def script_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``script.<key>`` -> [old, new] for every key whose value differs, appeared or went."""
    return {
        f"script.{key}": [old.get(key), new.get(key)]
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    }


def wandb_config(data: ManifestData) -> dict[str, Any]:
    """The W&B run's config: the script's own keys at the top, beside the package's settings."""
    return {**data.script_config, **data.config}
