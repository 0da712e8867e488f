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
