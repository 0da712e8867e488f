"""Resources of a code location, each built from its section of the one resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aes_core.config import AesConfig
from aes_resources.gpu import GpuResource
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import AesIOManager, ArtifactStore
from aes_resources.triton import TritonResource


def build_resources(cfg: AesConfig) -> dict[str, Any]:
    return {
        "settings": PipelineSettings.from_config(cfg),
        "io_manager": AesIOManager(base_uri=cfg.tables_location),
        "artifacts": ArtifactStore(root=str(Path(cfg.storage_root) / "artifacts")),
        "mlflow": MlflowTracker.from_config(cfg),
        "gpu": GpuResource.from_section(cfg.gpu),
        "triton": TritonResource(),
    }
