"""Resumable Lightning runs: an output folder keeps its checkpoints only for the same spec.

A run writes ``run_spec.json`` (what it trains) when it starts and ``result.json`` when it is
complete. A later run of the same spec resumes from the Lightning ``last.ckpt`` it finds; a
changed spec, or a completed run being re-made, starts from an empty folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

RESULT_FILE, SPEC_FILE, LAST_CKPT = "result.json", "run_spec.json", "last.ckpt"


def prepare_out_dir(out: Path, spec: dict[str, Any],
                    keep_completed: bool = False) -> tuple[list[str], bool]:
    """Keep resumable state in ``out`` only for an interrupted run of the same ``spec``.

    Returns (notes, completed): with ``keep_completed`` a finished run of the same spec is
    left as it is and ``completed`` is True (the caller reuses its result); otherwise a
    finished run, or one of another spec, is cleared. A note is written only when something
    existing is thrown away, never for a new folder."""
    out, notes = Path(out), []
    spec_path = out / SPEC_FILE
    if out.exists() and any(out.iterdir()):
        same = spec_path.exists() and json.loads(spec_path.read_text()) == spec
        done = (out / RESULT_FILE).exists()
        if same and done and keep_completed:
            return notes, True
        if done or not same:
            why = ("re-making a completed run" if same
                   else "its configuration, data or code changed" if spec_path.exists()
                   else "the folder holds files of an unknown run")
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            if any(True for _ in out.iterdir()):  # pragma: no cover
                raise RuntimeError(f"could not clear {out}")
            notes.append(f"starting over: {why}")
    out.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    return notes, False


def checkpoint_summary(path: Path) -> dict[str, Any]:
    """global_step, epochs and the best monitored score stored in a Lightning checkpoint."""
    # mmap: only the small pickled fields are read, not the weights and optimizer state
    ck = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    score = None
    for key, state in (ck.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            score = float(state["best_model_score"])
    return {"global_step": int(ck.get("global_step", 0)), "epochs": int(ck.get("epoch", -1)) + 1,
            "best_model_score": score}


def fresh_trainer_kwargs(trainer_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy for one ``Trainer``: a strategy object (e.g. ``DDPStrategy``) binds itself to the
    first Trainer that uses it, so each stage gets its own copy of the unused one."""
    import copy

    from lightning.pytorch.strategies import Strategy

    kw = dict(trainer_kwargs)
    if isinstance(kw.get("strategy"), Strategy):
        kw["strategy"] = copy.deepcopy(kw["strategy"])
    return kw


def device_count(trainer_kwargs: Mapping[str, Any]) -> int:
    """Processes a Trainer with these kwargs trains on (``devices``: a count or a list of
    indices, as ``GpuResource.trainer_kwargs`` gives; 1 when absent)."""
    devices = trainer_kwargs.get("devices", 1)
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices >= 1:
        return devices
    raise ValueError(f"trainer devices={devices!r}: give a device count (>= 1) or a list of "
                     f"device indices")
