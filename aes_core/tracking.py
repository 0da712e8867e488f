"""Reproducibility helpers: git commit, package versions, flattened params. No Dagster here."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import random
import subprocess
from pathlib import Path
from typing import Any

from aes_core.config import PROJECT_ROOT

TRACKED_PACKAGES = ("torch", "transformers", "lightning", "dagster", "mlflow", "onnxruntime",
                    "lightgbm", "scikit-learn", "numpy", "pandas")


COMMIT_ENV = "AES_GIT_COMMIT"


def git_commit() -> str:
    """The current commit (with ``-dirty`` if the tree has changes); where the code runs from a
    copy without ``.git``, ``$AES_GIT_COMMIT`` (set by whoever copied it), else ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(COMMIT_ENV, "unknown")


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """A hash of the ML library's source (``aes_core/**/*.py``): part of every asset's code
    version, so changed code makes its results stale and an unchanged re-run skips them."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def declared_requirements() -> list[str]:
    """The project's dependency ranges: ``pyproject.toml`` of this checkout, else the installed
    package's metadata (a copy run from its folder has the first, an install the second)."""
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if pyproject.exists():
        import tomllib

        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    try:
        return [r for r in importlib.metadata.requires("aes") or [] if "extra ==" not in r]
    except importlib.metadata.PackageNotFoundError:
        return []


def unmet_requirements(requirements: list[str] | None = None) -> list[str]:
    """Installed packages outside ``requirements`` (default: the project's ranges, checked
    once per process), e.g. ``transformers 5.17.0 (requires >=5.20,<6)``. Such an environment
    runs, but on paths nobody tested: MPNet under transformers 5.17 copies CPU tensors in its
    forward, so its fold models never capture as CUDA graphs and score about 4x slower per
    essay."""
    if requirements is None:
        return list(_unmet_declared())
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{req.name} not installed (requires {req.specifier or 'any version'})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            out.append(f"{req.name} {installed} (requires {req.specifier})")
    return out


@functools.lru_cache(maxsize=1)
def _unmet_declared() -> tuple[str, ...]:
    """The project's unmet ranges: read at load and by every MLflow run, so computed once."""
    return tuple(unmet_requirements(declared_requirements()))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {'train.lr': 1e-4, ...} (lists become strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out[key] = v if isinstance(v, (int, float, bool, str)) or v is None else str(v)
    return out


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass
