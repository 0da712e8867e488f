"""Resource wiring for the active profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aes_core.config import AesConfig
from aes_resources.gpu import GpuResource
from aes_resources.mlflow import MlflowTracker
from aes_resources.settings import PipelineSettings
from aes_resources.storage import ArtifactStore, TableIOManager
from aes_resources.triton import TritonResource


def build_resources(cfg: AesConfig, profile: str) -> dict[str, Any]:
    root = Path(cfg.storage_root)
    return {
        "settings": PipelineSettings(profile=profile),
        "io_manager": TableIOManager(base_dir=str(root / "tables")),
        "artifacts": ArtifactStore(root=str(root / "artifacts")),
        "mlflow": MlflowTracker(tracking_uri=cfg.mlflow_tracking_uri,
                                experiment=cfg.mlflow_experiment),
        "gpu": GpuResource.from_section(cfg.gpu),
        "triton": TritonResource(repo=cfg.serving.triton_repo, url=cfg.serving.triton_url,
                                 http_port=cfg.serving.http_port, grpc_port=cfg.serving.grpc_port,
                                 metrics_port=cfg.serving.metrics_port,
                                 startup_timeout_s=cfg.serving.startup_timeout_s,
                                 binary=cfg.serving.triton_binary),
    }
