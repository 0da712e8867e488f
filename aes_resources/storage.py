"""Where artifacts live: tables and stage results through a UPath IO manager, model folders
under an artifact root keyed by asset and partition.

``AesIOManager`` stores a DataFrame as Parquet and a stage result (any pydantic model of
``aes_core``) as JSON tagged with its type, so it loads back as the same typed object. It is
Dagster's ``UPathIOManager``: the base may be a local folder or any fsspec URL
(``s3://bucket/aes/tables``, ``gs://...``, ``memory://...``). A single-run backfill of a
partitioned asset hands it ``{partition key: value}`` and every partition is stored on its own.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import BaseModel

TYPE_KEY, DATA_KEY = "__type__", "data"
STORED_PATHS = "paths"  # metadata of a single-run backfill: {partition key: stored path}
TRUSTED_MODULES = ("aes_core.",)


def partition_dirname(partition: str) -> str:
    """A partition key as one folder name (``0|mean`` -> ``0__mean``)."""
    return partition.replace("|", "__")


def _key_path(root: Path, asset_key: dg.AssetKey, partition: str | None) -> Path:
    p = root.joinpath(*asset_key.path)
    return p / partition_dirname(partition) if partition else p


class ArtifactStore(dg.ConfigurableResource):
    """Local folders for models and reports: ``<root>/<asset key>/<partition>``."""

    root: str

    def path(self, asset_key: dg.AssetKey, partition: str | None = None) -> Path:
        """Where an asset's (partition's) folder lives, without creating it."""
        return _key_path(Path(self.root), asset_key, partition)

    def folder(self, asset_key: dg.AssetKey, partition: str | None = None,
               fresh: bool = False) -> Path:
        p = self.path(asset_key, partition)
        if fresh and p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        return p


def encode(obj: Any) -> tuple[str, bytes]:
    """(suffix, bytes) of a value: Parquet for tables, typed JSON for stage results."""
    if isinstance(obj, pd.DataFrame):
        import io

        buf = io.BytesIO()
        obj.to_parquet(buf, index=False)
        return ".parquet", buf.getvalue()
    if isinstance(obj, BaseModel):
        cls = type(obj)
        payload = {TYPE_KEY: f"{cls.__module__}:{cls.__qualname__}",
                   DATA_KEY: json.loads(obj.model_dump_json())}
    else:
        payload = obj
    return ".json", json.dumps(payload, indent=2, default=str).encode()


def decode(suffix: str, raw: bytes) -> Any:
    """The inverse of :func:`encode`."""
    if suffix == ".parquet":
        import io

        return pd.read_parquet(io.BytesIO(raw))
    payload = json.loads(raw)
    if isinstance(payload, dict) and set(payload) == {TYPE_KEY, DATA_KEY}:
        module, _, name = payload[TYPE_KEY].partition(":")
        if not module.startswith(TRUSTED_MODULES):
            raise ValueError(f"refusing to load stored type {payload[TYPE_KEY]!r}")
        cls = getattr(importlib.import_module(module), name)
        return cls.model_validate(payload[DATA_KEY])
    return payload


def _with_suffix(path, suffix: str):
    """The stored file of ``path`` (an asset's path without its suffix) for one suffix."""
    return path.with_name(path.name + suffix)


def stored_exists(path) -> bool:
    """Whether a value is stored at ``path`` (a path without its suffix: the IO manager's
    path object, or a string such as a materialization's recorded path, local or a URL)."""
    from upath import UPath

    base = UPath(path) if isinstance(path, str) else path
    return any(_with_suffix(base, s).exists() for s in TablesIOManager.SUFFIXES)


class TablesIOManager(dg.UPathIOManager):
    """Parquet / typed JSON per asset (and partition) under a local or remote base path."""

    extension = ""  # the suffix follows the value's type, see encode()
    SUFFIXES = (".parquet", ".json")

    def path_exists(self, path) -> bool:
        return stored_exists(path)

    def dump_to_path(self, context, obj: Any, path) -> None:
        suffix, raw = encode(obj)
        target = _with_suffix(path, suffix)
        tmp = _with_suffix(path, suffix + ".tmp")
        with tmp.open("wb") as f:  # never leave a half-written table behind
            f.write(raw)
        tmp.rename(target)
        for other in self.SUFFIXES:  # a value whose type changed must not shadow the new one
            if other != suffix and _with_suffix(path, other).exists():
                _with_suffix(path, other).unlink()

    def load_from_path(self, context, path) -> Any:
        for suffix in self.SUFFIXES:
            f = _with_suffix(path, suffix)
            if f.exists():
                with f.open("rb") as fh:
                    return decode(suffix, fh.read())
        raise FileNotFoundError(
            f"no stored output for asset {context.asset_key.to_user_string()} at {path}.*: "
            "materialize it first")

    def get_metadata(self, context, obj: Any) -> dict[str, Any]:
        return {"type": type(obj).__name__}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            # a single-run backfill: the asset returns {partition key: value}
            missing = [k for k in context.asset_partition_keys if k not in obj]
            if missing:
                raise ValueError(f"{context.asset_key.to_user_string()}: no value for "
                                 f"partition(s) {missing[:5]} of this run's range")
            paths = self._get_paths_for_partitions(context)
            for pk, path in paths.items():
                self.make_directory(path.parent)
                self.dump_to_path(context, obj[pk], path)
            context.add_output_metadata({  # every partition's path: the driver checks them
                "partitions_stored": len(obj),
                STORED_PATHS: dg.MetadataValue.json({str(k): str(v) for k, v in paths.items()})})
            return
        super().handle_output(context, obj)


class AesIOManager(dg.ConfigurableIOManagerFactory):
    """The project's IO manager: ``base_uri`` is a folder or an fsspec URL."""

    base_uri: str

    def create_io_manager(self, context) -> TablesIOManager:
        from upath import UPath

        return TablesIOManager(base_path=UPath(self.base_uri))
