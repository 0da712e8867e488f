"""`dagster dev` serves the graph: start it for real and query it over GraphQL."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from aes_core.serving.triton import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dagster_dev(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "AES_PROFILE": "cpu-small"}
    log = open(tmp_path / "dagster_dev.log", "w")
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen(
        [str(dagster), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1",
         "-p", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/graphql"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "dagster_dev.log").read_text()[-3000:])
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise TimeoutError("dagster dev did not answer within 120 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


QUERY = """
{ assetNodes { assetKey { path } groupName isPartitioned } }
"""


@pytest.mark.slow
def test_dagster_dev_serves_the_graph(dagster_dev):
    keys: set[str] = set()
    deadline = time.time() + 90
    while time.time() < deadline:  # the code location loads after the server answers
        r = httpx.post(dagster_dev, json={"query": QUERY}, timeout=30)
        assert r.status_code == 200, r.text
        nodes = (r.json().get("data") or {}).get("assetNodes") or []
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        if keys:
            break
        time.sleep(2)
    assert {"raw_essays", "folded_essays", "test_essays", "persuade_reference"} <= keys
    assert {"serving_bundle", "triton_repo", "submission"} <= keys
    partitioned = {"/".join(n["assetKey"]["path"]) for n in nodes if n["isPartitioned"]}
    per_backbone = {k for k in keys if k.endswith(("/onnx_models", "/fold_head_checkpoints"))}
    assert per_backbone and partitioned == per_backbone
    groups = {n["groupName"] for n in nodes}
    assert "data" in groups
