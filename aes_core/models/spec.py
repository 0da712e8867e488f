"""What a saved regressor folder is: its spec file and layout (no torch import, so the
serving manifest and the Dagster definitions can read specs cheaply)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from aes_core.config import HeadSection

SPEC_FILE = "aes_model.json"
ONNX_FILE = "model.onnx"  # an exported member folder: the regressor folder + this graph
WEIGHTS_FILE = "model.safetensors"
BACKBONE_DIR = "backbone"


class RegressorSpec(BaseModel):
    head: str
    heads_cfg: HeadSection = HeadSection()
    loss: str = "bce"
    max_length: int = 512
    add_newline_tokens: bool = False
    backbone_name: str = "minilm"
    chunking: bool = False     # whole essay as overlapping windows (BackboneSection.chunking)
    chunk_overlap: int = 128
    max_chunks: int = 8
    tail_tokens: int = 0       # head + tail truncation (BackboneSection.tail_tokens)


def load_spec(folder: str | Path) -> RegressorSpec:
    """The RegressorSpec stored in a regressor or exported member folder."""
    path = Path(folder) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {SPEC_FILE} (not a regressor/member folder)")
    return RegressorSpec.model_validate_json(path.read_text())
