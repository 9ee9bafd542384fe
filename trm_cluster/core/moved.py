"""Module paths the package has since moved (CHANGELOG.md), still honoured where a path outlives the code
that wrote it: a manifest names its workload as ``module:NAME``, and a job that submitit pickled before an
upgrade names its job class by module (``trm_cluster.job.TrainingJob``). Without this, a run requeued
across ``git pull`` would fail to start and strand."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

MOVED_MODULES: dict[str, str] = {
    "trm_cluster.job": "trm_cluster.scheduler.job",
    "trm_cluster.script_job": "trm_cluster.scheduler.script_job",
    "trm_cluster.trm": "trm_cluster.workloads.trm",
    "trm_cluster.examples.regression": "trm_cluster.workloads.regression",
}
"""Old module -> today's; a package's submodules follow it (``trm_cluster.trm.workload``)."""


def current_module(name: str) -> str | None:
    """Today's path of a module the package moved, or None when ``name`` did not move."""
    for old, new in MOVED_MODULES.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


def current_reference(reference: str) -> str:
    """A ``module:NAME`` reference with a moved module replaced by today's path."""
    module, sep, attribute = reference.partition(":")
    return f"{current_module(module) or module}{sep}{attribute}"


class _Alias(importlib.abc.Loader):
    """Loads an old module path as a view of today's module: the same objects under the old name."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None  # a fresh module object; exec_module fills it

    def exec_module(self, module: ModuleType) -> None:
        target = importlib.import_module(self.target)
        module.__dict__.update({k: v for k, v in vars(target).items() if k not in ("__spec__", "__loader__")})
        module.__name__ = module.__spec__.name if module.__spec__ else module.__name__


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("trm_cluster."):
            return None
        new = current_module(fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(new)) if new else None


def honour_moved_modules() -> None:
    """Let ``import trm_cluster.job`` (an old pickle, an old script) resolve to today's module; idempotent."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(
            0, _MovedModuleFinder()
        )  # before the path finder: it answers only for moved names
