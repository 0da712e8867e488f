"""gpu.mps: a private MPS control daemon around a step's GPU workers.

No GPU here, so the control program is a script that speaks its command line (``-d`` starts
the daemon, ``quit`` on stdin stops it) and records what it was given; the GPU runs in
BENCHMARKS.md used the real one."""

import os
import stat
import tempfile
from pathlib import Path

import pytest

from aes_core.training.mps import LOG_VAR, PIPE_VAR, mps_daemon
from aes_core.training.parallel import WorkerSlot, run_jobs

FAKE_CONTROL = """#!/bin/sh
if [ "$1" = "-d" ]; then
  [ -n "$FAIL" ] && { echo "$FAIL" >&2; exit 1; }
  echo "start $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY \
${CUDA_VISIBLE_DEVICES:-all}" >> "$RECORD"
  echo "daemon started" > "$CUDA_MPS_LOG_DIRECTORY/control.log"
else
  read cmd; echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> "$RECORD"
fi
"""


@pytest.fixture()
def fake_control(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    prog = bin_dir / "nvidia-cuda-mps-control"
    prog.write_text(FAKE_CONTROL)
    prog.chmod(prog.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "record.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(record))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.delenv(PIPE_VAR, raising=False)
    return record


def worker_env(_: int) -> tuple[str | None, str | None]:
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get(PIPE_VAR)


def test_workers_reach_the_steps_daemon_by_its_own_gpu_numbers(fake_control):
    slots = [WorkerSlot(gpu=g, threads=1) for g in (0, 1)]
    with mps_daemon() as daemon:
        assert os.environ[PIPE_VAR] == str(daemon.pipe_dir)
        assert daemon.control_log() == "daemon started\n"
        under_mps = run_jobs(worker_env, [0, 1], slots, start="fork", logical_gpus=True)
        physical = run_jobs(worker_env, [0, 1], slots, start="fork")
    # the daemon saw the step's GPUs 2,3 and numbers them 0,1 for its clients
    assert under_mps == [("0", str(daemon.pipe_dir)), ("1", str(daemon.pipe_dir))]
    assert [gpu for gpu, _ in physical] == ["2", "3"]
    start, stop = fake_control.read_text().splitlines()
    assert start == f"start {daemon.pipe_dir} {daemon.log_dir} 2,3"
    assert stop == f"quit {daemon.pipe_dir}"
    assert PIPE_VAR not in os.environ and LOG_VAR not in os.environ  # the step's env again
    assert not daemon.pipe_dir.parent.exists()


def test_a_daemon_that_cannot_start_says_why_and_leaves_nothing(fake_control, monkeypatch):
    monkeypatch.setenv("FAIL", "An instance of this daemon is already running")
    before = set(Path(tempfile.gettempdir()).glob("aes-mps-*"))
    with pytest.raises(RuntimeError, match="-d failed .exit 1.: An instance of this daemon"):
        with mps_daemon():
            pass
    assert PIPE_VAR not in os.environ
    assert set(Path(tempfile.gettempdir()).glob("aes-mps-*")) == before
    assert not fake_control.exists()  # never started, so never asked to quit


def test_mps_without_the_driver_tools_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="gpu.mps is on but 'nvidia-cuda-mps-control' is not"):
        with mps_daemon():
            pass


def test_auto_uses_mps_where_it_starts_and_says_why_not_elsewhere(fake_control, monkeypatch):
    from aes_core.training.mps import step_mps

    said: list[str] = []
    with step_mps("auto", True, said.append) as daemon:
        assert daemon is not None and os.environ[PIPE_VAR] == str(daemon.pipe_dir)
    with step_mps("auto", False, said.append) as daemon:  # CPU workers: nothing to share
        assert daemon is None
    with step_mps("off", True, said.append) as daemon:
        assert daemon is None
    assert said == [] and fake_control.read_text().count("start ") == 1
    monkeypatch.setenv("FAIL", "cannot start")
    with step_mps("auto", True, said.append) as daemon:
        assert daemon is None and PIPE_VAR not in os.environ
    assert len(said) == 1 and "cannot start" in said[0] and "take turns" in said[0]
    with pytest.raises(RuntimeError, match="cannot start"), step_mps("on", True, said.append):
        pass
    with pytest.raises(ValueError, match="use off, auto or on"), step_mps("yes", True, print):
        pass
