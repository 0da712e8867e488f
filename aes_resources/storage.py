"""Where artifacts live: tables through a Parquet/JSON IO manager, folders keyed by asset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd


def _key_path(root: Path, asset_key: dg.AssetKey, partition: str | None) -> Path:
    p = root.joinpath(*asset_key.path)
    if partition:
        p = p / partition.replace("|", "__")
    return p


class ArtifactStore(dg.ConfigurableResource):
    """Folders for models, engines and reports: ``<root>/<asset key>/<partition>``."""

    root: str

    def path(self, asset_key: dg.AssetKey, partition: str | None = None) -> Path:
        """Where an asset's (partition's) folder lives, without creating it."""
        return _key_path(Path(self.root), asset_key, partition)

    def folder(self, asset_key: dg.AssetKey, partition: str | None = None,
               fresh: bool = False) -> Path:
        p = _key_path(Path(self.root), asset_key, partition)
        if fresh and p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        return p


class TableIOManager(dg.ConfigurableIOManager):
    """DataFrames as Parquet, dicts/lists/strings as JSON, under ``<base_dir>/<asset key>``.

    Writes go to a temporary file first and are renamed into place, so an interrupted run
    never leaves a half-written table.
    """

    base_dir: str

    def _path(self, context, suffix: str) -> Path:
        partition = context.partition_key if context.has_partition_key else None
        return _key_path(Path(self.base_dir), context.asset_key, partition).with_suffix(suffix)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if isinstance(obj, pd.DataFrame):
            path = self._path(context, ".parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".parquet.tmp")
            obj.to_parquet(tmp, index=False)
        else:
            path = self._path(context, ".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(obj, indent=2, default=str))
        tmp.replace(path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            return {k: self._load_one(context, k) for k in context.asset_partition_keys}
        key = context.asset_partition_key if context.has_asset_partitions else None
        return self._load_one(context, key, upstream)

    def _load_one(self, context, partition: str | None, upstream=None) -> Any:
        base = _key_path(Path(self.base_dir), context.asset_key, partition)
        for suffix, reader in ((".parquet", pd.read_parquet),
                               (".json", lambda p: json.loads(Path(p).read_text()))):
            path = base.with_suffix(suffix)
            if path.exists():
                return reader(path)
        raise FileNotFoundError(
            f"no stored output for asset {context.asset_key.to_user_string()}"
            + (f" partition {partition}" if partition else "")
            + f" under {base}.*: materialize it first"
        )
