"""tools/device_chunks.py: split/join round trip, corrupt and missing chunks, fp16 folders.

``join``/``check`` run in a subprocess with ``python -I -S`` (no site-packages) to prove they
need only the standard library, as on the GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import device_chunks as dc

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "device_chunks.py"


def _stdlib_only(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture
def folder(tmp_path) -> Path:
    src = tmp_path / "model"
    (src / "1_Pooling").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (src / "1_Pooling" / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(os.urandom(300_000))
    (src / "empty.txt").write_bytes(b"")
    return src


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_split_join_round_trip_stdlib_only(folder, tmp_path):
    out = tmp_path / "chunks"
    m = dc.split(folder, out, chunk_mb=0.1)  # 100 KiB chunks
    assert len(m["chunks"]) >= 3
    assert all(c["size"] <= int(0.1 * dc.MIB) for c in m["chunks"])
    assert sum(c["size"] for c in m["chunks"]) == m["whole"]["size"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [dc.MANIFEST] + [c["file"] for c in m["chunks"]])
    dest = tmp_path / "there" / "model"
    r = _stdlib_only("join", str(out), str(dest))
    assert r.returncode == 0, r.stderr
    assert _tree(dest) == _tree(folder)
    # joining again refuses to overwrite unless --force
    r = _stdlib_only("join", str(out), str(dest))
    assert r.returncode == 1 and "exists" in r.stderr
    assert _stdlib_only("join", str(out), str(dest), "--force").returncode == 0


def test_join_from_chunks_spread_over_folders(folder, tmp_path):
    """Chunks arriving in separate calls: pass the files (or several folders) explicitly."""
    out = tmp_path / "chunks"
    m = dc.split(folder, out, chunk_mb=0.1)
    files = [str(out / dc.MANIFEST)] + [str(out / c["file"]) for c in reversed(m["chunks"])]
    dest = tmp_path / "dest"
    dc.join([Path(f) for f in files], dest)
    assert _tree(dest) == _tree(folder)


def test_corrupt_chunk_is_named(folder, tmp_path):
    out = tmp_path / "chunks"
    m = dc.split(folder, out, chunk_mb=0.1)
    bad = out / m["chunks"][1]["file"]
    raw = bytearray(bad.read_bytes())
    raw[10] ^= 0xFF
    bad.write_bytes(bytes(raw))
    dest = tmp_path / "dest"
    r = _stdlib_only("join", str(out), str(dest))
    assert r.returncode == 1
    assert f"chunk 2/{len(m['chunks'])} ({bad.name}) is corrupt" in r.stderr
    assert not dest.exists() and not (tmp_path / "dest.partial").exists()
    r = _stdlib_only("check", str(out))
    assert r.returncode == 1 and "corrupt" in r.stdout


def test_missing_and_truncated_chunks(folder, tmp_path):
    out = tmp_path / "chunks"
    m = dc.split(folder, out, chunk_mb=0.1)
    n = len(m["chunks"])
    (out / m["chunks"][-1]["file"]).unlink()
    r = _stdlib_only("check", str(out))  # before the last call: missing is fine, exit 0
    assert r.returncode == 0 and f"{n - 1}/{n} chunk(s)" in r.stdout
    with pytest.raises(dc.ChunkError, match=rf"chunk {n}/{n} .* is missing"):
        dc.join([out], tmp_path / "dest")
    first = out / m["chunks"][0]["file"]
    first.write_bytes(first.read_bytes()[:-1])
    with pytest.raises(dc.ChunkError, match=r"chunk 1/.*corrupt: \d+ bytes"):
        dc.join([out], tmp_path / "dest")


def test_plan_lists_one_call_per_chunk(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = dc.split(folder, Path("chunks"), chunk_mb=0.1)
    text = dc.plan(Path("chunks"))
    assert text.count("call ") == len(m["chunks"])
    assert f'"chunks/{dc.MANIFEST}", "chunks/{m["chunks"][0]["file"]}"' in text
    assert text.rstrip().endswith("join /tmp/carry/model /tmp/models/model")


def test_fp16_split_of_a_hf_folder(tmp_path):
    import torch
    from transformers import AutoModel

    from tests.conftest import build_tiny_bert

    src = build_tiny_bert(tmp_path / "tiny", hidden=16, layers=1)
    out = tmp_path / "chunks"
    m = dc.split(src, out, chunk_mb=0.5, fp16=True)
    assert m["fp16"] and len(m["chunks"]) >= 2
    dest = tmp_path / "joined"
    r = _stdlib_only("join", str(out), str(dest))
    assert r.returncode == 0, r.stderr
    w_src = (src / "model.safetensors").stat().st_size
    w_new = (dest / "model.safetensors").stat().st_size
    assert w_new < 0.6 * w_src
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(dest / "model.safetensors")).values()
            if v.is_floating_point()} == {torch.float16}
    a = AutoModel.from_pretrained(str(src), local_files_only=True).eval()
    b = AutoModel.from_pretrained(str(dest), local_files_only=True).eval()
    assert next(b.parameters()).dtype == torch.float32  # config dtype: fp16 only in transit
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        ha, hb = a(input_ids=ids).last_hidden_state, b(input_ids=ids).last_hidden_state
    assert torch.allclose(ha, hb, atol=1e-2)
    assert (dest / "tokenizer.json").is_file() or (dest / "vocab.txt").is_file()
