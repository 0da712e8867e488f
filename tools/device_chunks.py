"""Move a folder larger than the device tool's 64 MiB per call to the GPU machine in chunks.

The device tool sends the working tree plus ``carry`` paths, at most 64 MiB per call (our
tracked tree is ~2.3 MB of it), and ignored repository folders are NOT kept on the device
machine between calls, but ``/tmp`` is while the machine stays warm (it goes back after
~30 s idle, or 30 minutes held). So a big folder travels as chunks over consecutive calls:

Here (CPU machine)::

    python tools/device_chunks.py split var/models/mpnet .carry_chunks/mpnet --chunk-mb 55 --fp16
    python tools/device_chunks.py plan .carry_chunks/mpnet        # prints the calls below

``split`` packs the folder into one uncompressed tar stream (``--fp16`` first rewrites a
Hugging Face folder's weights as fp16 safetensors: all-mpnet-base-v2 438 MB → ~219 MB),
cuts it into ``<name>.chunk-001`` … files of ``--chunk-mb`` MiB, and writes
``manifest.json`` (sha256 + size of each chunk, of the whole stream, and of every file).
``.carry_chunks/`` is git-ignored, so each call names what it needs in ``carry``.

On the device, one call per chunk, back to back (each well under 30 s so the machine stays
warm)::

    call i (carry: .carry_chunks/mpnet/manifest.json, .carry_chunks/mpnet/mpnet.chunk-00i):
        mkdir -p /tmp/carry/mpnet && cp .carry_chunks/mpnet/* /tmp/carry/mpnet/ \
          && python3 tools/device_chunks.py check /tmp/carry/mpnet
    last call (carry the last chunk + manifest.json), same copy, then:
        python3 tools/device_chunks.py join /tmp/carry/mpnet /tmp/models/mpnet

``join`` verifies every chunk's sha256 (naming a missing or corrupt one), the sha256 of the
reassembled stream, unpacks it into DEST and checks every file against the manifest. Later
calls on the same warm machine read ``/tmp/models/mpnet`` (point the backbone ``path`` there,
e.g. with a profile override). If the machine went back in between, ``/tmp`` is gone:
``check`` says which chunks are missing; send those again.

``join``, ``check`` and ``plan`` use the Python standard library only (the GPU machine has
Python 3.12 and no project install); only ``split --fp16`` and ``fp16`` import torch and
safetensors, lazily.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = "aes-device-chunks/1"
MIB = 1 << 20
_BUF = 4 * MIB
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")


class ChunkError(RuntimeError):
    """A chunk is missing or corrupt, or the reassembled folder does not match."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(_BUF):
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- split


class _ChunkWriter:
    """A write-only file object that rolls over to a new chunk file every ``size`` bytes."""

    def __init__(self, outdir: Path, name: str, size: int) -> None:
        self.outdir, self.name, self.size = outdir, name, size
        self.chunks: list[dict] = []
        self.whole = hashlib.sha256()
        self.total = 0
        self._fh = None
        self._h = None
        self._n = 0

    def _open_next(self) -> None:
        self._close_current()
        fname = f"{self.name}.chunk-{len(self.chunks) + 1:03d}"
        self._fh = open(self.outdir / fname, "wb")
        self._h = hashlib.sha256()
        self._n = 0
        self.chunks.append({"file": fname})

    def _close_current(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self.chunks[-1].update(size=self._n, sha256=self._h.hexdigest())
            _say(f"  wrote {self.chunks[-1]['file']} ({self._n / MIB:.1f} MiB)")
            self._fh = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._fh is None or self._n >= self.size:
                self._open_next()
            take = min(len(view), self.size - self._n)
            part = view[:take]
            self._fh.write(part)
            self._h.update(part)
            self.whole.update(part)
            self._n += take
            self.total += take
            view = view[take:]
        return len(data)

    def close(self) -> None:
        self._close_current()


def split(folder: Path, outdir: Path, chunk_mb: float = 55, fp16: bool = False,
          name: str | None = None) -> dict:
    """Pack ``folder`` into chunks of ``chunk_mb`` MiB under ``outdir``; returns the manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ChunkError(f"{folder} is not a folder")
    name = name or folder.name
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob(f"{name}.chunk-*"):
        old.unlink()
    (outdir / MANIFEST).unlink(missing_ok=True)
    tmp = None
    try:
        src = folder
        if fp16:
            tmp = Path(tempfile.mkdtemp(prefix=f"{name}_fp16_", dir=outdir.parent))
            src = tmp / name
            to_fp16(folder, src)
        files = {
            str(p.relative_to(src)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(src.rglob("*")) if p.is_file()
        }
        writer = _ChunkWriter(outdir, name, max(1, int(chunk_mb * MIB)))
        _say(f"packing {src} ({sum(f['size'] for f in files.values()) / MIB:.1f} MiB, "
             f"{len(files)} files) into {chunk_mb:g} MiB chunks under {outdir}")
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for rel in files:
                info = tar.gettarinfo(str(src / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(src / rel, "rb") as fh:
                    tar.addfile(info, fh)
        writer.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    manifest = {
        "format": FORMAT,
        "name": name,
        "source": str(folder.resolve()),
        "fp16": fp16,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "chunk_mib": chunk_mb,
        "whole": {"size": writer.total, "sha256": writer.whole.hexdigest()},
        "chunks": writer.chunks,
        "files": files,
    }
    (outdir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _say(f"{len(writer.chunks)} chunk(s), {writer.total / MIB:.1f} MiB in all; "
         f"manifest {outdir / MANIFEST}")
    return manifest


# --------------------------------------------------------------------------- fp16 (torch)


def to_fp16(src: Path, dst: Path) -> Path:
    """Copy a HF folder with its floating-point weights as fp16 ``*.safetensors``.

    ``pytorch_model.bin`` becomes ``model.safetensors``; shards keep their names. Non-float
    tensors (position ids) stay as they are. ``config.json`` gets ``"dtype": "float32"`` so
    ``AutoModel.from_pretrained`` (whose default dtype is "auto") still gives float32
    parameters, as with the original folder: fp16 is only the transport format. Needs torch
    and safetensors.
    """
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    weights = [p for p in src.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    safes = [p for p in weights if p.suffix == ".safetensors"]
    bins = [p for p in weights if p.suffix == ".bin" and "pytorch_model" in p.name]
    chosen = safes or bins
    if not chosen:
        raise ChunkError(f"{src}: no model.safetensors / pytorch_model.bin to convert")
    skip_names = {"aes_model_store.json", ".gitattributes", "README.md"}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_dir() or p in weights or p.name in skip_names:
            continue
        if p.name == "pytorch_model.bin.index.json" and safes:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst / rel)
    before = after = 0
    for w in chosen:
        rel = w.relative_to(src)
        if w.suffix == ".safetensors":
            sd = load_file(str(w))
        else:
            sd = torch.load(str(w), map_location="cpu", weights_only=True)
            rel = rel.with_name(rel.name.replace("pytorch_model", "model")).with_suffix(
                ".safetensors")
        out = {}
        for k, v in sd.items():
            before += v.numel() * v.element_size()
            v = v.to(torch.float16) if v.is_floating_point() else v
            out[k] = v.contiguous().clone()
            after += v.numel() * v.element_size()
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(dst / rel), metadata={"format": "pt"})
        os.chmod(dst / rel, 0o644)
    if bins and not safes:  # a sharded .bin index → safetensors index
        idx = dst / "pytorch_model.bin.index.json"
        if idx.exists():
            data = json.loads(idx.read_text())
            data["weight_map"] = {
                k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors")
                for k, v in data.get("weight_map", {}).items()
            }
            (dst / "model.safetensors.index.json").write_text(json.dumps(data, indent=2))
            idx.unlink()
    cfg_path = dst / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("torch_dtype", None)
        cfg["dtype"] = "float32"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (dst / "aes_fp16.json").write_text(json.dumps({
        "source": str(src.resolve()), "weights": [str(w.relative_to(src)) for w in chosen],
        "bytes_before": before, "bytes_after": after, "stored_dtype": "float16",
        "load_dtype": "float32 (config.json dtype)",
    }, indent=2) + "\n")
    _say(f"fp16: {src} → {dst} (weights {before / 1e6:.1f} MB → {after / 1e6:.1f} MB)")
    return dst


# --------------------------------------------------------------------------- check / join


def _load_manifest(sources: list[Path]) -> tuple[dict, dict[str, Path]]:
    """The manifest and {chunk file name → path} from folders and/or files."""
    files: dict[str, Path] = {}
    manifest_path = None
    for s in sources:
        s = Path(s)
        if s.is_dir():
            for p in sorted(s.iterdir()):
                if p.name == MANIFEST:
                    manifest_path = manifest_path or p
                elif p.is_file():
                    files.setdefault(p.name, p)
        elif s.is_file():
            if s.name == MANIFEST:
                manifest_path = s
            else:
                files[s.name] = s
        else:
            raise ChunkError(f"{s} does not exist")
    if manifest_path is None:
        raise ChunkError(f"no {MANIFEST} among {[str(s) for s in sources]}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ChunkError(f"{manifest_path}: not a {FORMAT} manifest")
    return manifest, files


def check(sources: list[Path], verify: bool = True) -> list[str]:
    """Problems with the chunks at hand ([] = all present and intact)."""
    manifest, files = _load_manifest(sources)
    problems = []
    n = len(manifest["chunks"])
    for i, c in enumerate(manifest["chunks"], 1):
        p = files.get(c["file"])
        tag = f"chunk {i}/{n} ({c['file']})"
        if p is None:
            problems.append(f"{tag} is missing")
        elif p.stat().st_size != c["size"]:
            problems.append(f"{tag} is corrupt: {p.stat().st_size} bytes, expected {c['size']}")
        elif verify and sha256_file(p) != c["sha256"]:
            problems.append(f"{tag} is corrupt: sha256 differs from the manifest")
    return problems


class _ChunkReader:
    """Read the chunks in order as one stream (for tarfile's stream mode)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.whole = hashlib.sha256()
        self._fh = None

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._fh is None:
                if not self.paths:
                    break
                self._fh = open(self.paths.pop(0), "rb")
            b = self._fh.read(_BUF if n < 0 else n - len(out))
            if not b:
                self._fh.close()
                self._fh = None
                continue
            out += b
        self.whole.update(out)
        return bytes(out)

    def drain(self) -> None:
        while self.read(_BUF):
            pass


def join(sources: list[Path], dest: Path, force: bool = False) -> dict:
    """Verify the chunks, reassemble, unpack into ``dest``, check every file."""
    manifest, files = _load_manifest(sources)
    problems = check(sources, verify=True)
    if problems:
        raise ChunkError("; ".join(problems))
    dest = Path(dest)
    if dest.exists():
        if not force and not any(dest.iterdir()):
            dest.rmdir()
        elif not force:
            raise ChunkError(f"{dest} exists (--force replaces it)")
        else:
            shutil.rmtree(dest)
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    reader = _ChunkReader([files[c["file"]] for c in manifest["chunks"]])
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or member.name not in manifest["files"]:
                    raise ChunkError(f"unexpected member {member.name!r} in the stream")
                target = (staging / member.name).resolve()
                if staging.resolve() not in target.parents:
                    raise ChunkError(f"member {member.name!r} escapes {dest}")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _BUF)
        reader.drain()
        whole = reader.whole.hexdigest()
        if whole != manifest["whole"]["sha256"]:
            raise ChunkError(f"the reassembled stream has sha256 {whole}, manifest says "
                             f"{manifest['whole']['sha256']}")
        for rel, meta in manifest["files"].items():
            p = staging / rel
            if not p.is_file():
                raise ChunkError(f"{rel} is missing after unpacking")
            if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
                raise ChunkError(f"{rel} does not match the manifest after unpacking")
        staging.rename(dest)
    except (tarfile.TarError, EOFError) as e:
        raise ChunkError(f"the reassembled stream is not a valid tar ({e})") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _say(f"joined {len(manifest['chunks'])} chunk(s) into {dest}: "
         f"{len(manifest['files'])} files, all hashes OK")
    return manifest


def plan(chunkdir: Path, remote_tmp: str = "/tmp/carry", dest: str | None = None) -> str:
    """The device calls (carry list + command) for the chunks in ``chunkdir``."""
    chunkdir = Path(chunkdir)
    manifest, _ = _load_manifest([chunkdir])
    name = manifest["name"]
    rel = os.path.relpath(chunkdir.resolve(), Path.cwd().resolve())
    there = f"{remote_tmp}/{name}"
    dest = dest or f"/tmp/models/{name}"
    lines = []
    n = len(manifest["chunks"])
    for i, c in enumerate(manifest["chunks"], 1):
        cmd = f"mkdir -p {there} && cp {rel}/* {there}/ && "
        if i < n:
            cmd += f"python3 tools/device_chunks.py check {there}"
        else:
            cmd += f"python3 tools/device_chunks.py join {there} {dest}"
        carry = [f"{rel}/{MANIFEST}", f"{rel}/{c['file']}"]
        lines.append(f"call {i}/{n}: carry {json.dumps(carry)}\n  command: {cmd}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="pack FOLDER into chunks + manifest under OUTDIR")
    s.add_argument("folder", type=Path)
    s.add_argument("outdir", type=Path)
    s.add_argument("--chunk-mb", type=float, default=55, help="chunk size in MiB (default 55)")
    s.add_argument("--fp16", action="store_true", help="HF folder: weights to fp16 first")
    s.add_argument("--name", default=None, help="chunk name prefix (default: folder name)")
    j = sub.add_parser("join", help="verify + reassemble: join CHUNKDIR_OR_FILES... DEST")
    j.add_argument("paths", nargs="+", type=Path, help="chunk folder(s)/files, then DEST")
    j.add_argument("--force", action="store_true", help="replace DEST if it exists")
    c = sub.add_parser("check", help="which chunks are present and intact")
    c.add_argument("paths", nargs="+", type=Path)
    c.add_argument("--quick", action="store_true", help="sizes only, no hashing")
    p = sub.add_parser("plan", help="print the device calls for a chunk folder")
    p.add_argument("chunkdir", type=Path)
    p.add_argument("--dest", default=None, help="folder on the device (default /tmp/models/NAME)")
    f = sub.add_parser("fp16", help="copy a HF folder with fp16 safetensors weights")
    f.add_argument("src", type=Path)
    f.add_argument("dst", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "split":
            split(a.folder, a.outdir, a.chunk_mb, a.fp16, a.name)
        elif a.cmd == "join":
            if len(a.paths) < 2:
                ap.error("join needs CHUNKDIR_OR_FILES... DEST")
            join(a.paths[:-1], a.paths[-1], a.force)
        elif a.cmd == "check":
            manifest, files = _load_manifest(a.paths)
            problems = check(a.paths, verify=not a.quick)
            n = len(manifest["chunks"])
            print(f"{manifest['name']}: {n - len(problems)}/{n} chunk(s) present and intact")
            for pr in problems:
                print(f"  {pr}")
            # missing chunks are expected before the last call; corrupt ones are not
            return 1 if any("corrupt" in pr for pr in problems) else 0
        elif a.cmd == "plan":
            print(plan(a.chunkdir, dest=a.dest))
        elif a.cmd == "fp16":
            to_fp16(a.src, a.dst)
    except ChunkError as e:
        _say(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
