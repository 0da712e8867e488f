"""The serving bundle: one folder holding everything scoring needs, described by a manifest.

The export stage writes it (``serving.bundle_dir``); the submission, the inbox sensor, the
rescoring schedule, the Triton repository and the teachers' page read only this folder, so a
bundle copied to another machine serves without any pipeline storage next to it::

    manifest.json                    ServingManifest (written last, atomically)
    ensemble/ensemble.json           EnsembleArtifact (weights, thresholds, ...)
    members/<member>/fold<k>-<hash>/ model.onnx, model.safetensors, aes_model.json, backbone/
    gbdt/                            GBDT member folder (when the ensemble has one)
    essay_stats.json                 typical essay statistics per score (the page)
    student/<hash>/                  the distilled student (optional): a regressor folder
    flagger/                         the essay flagger (gaming / off-topic flags and the score
                                     cap policy), named by ``extras["flagger"]`` when present

Every path in the manifest is relative to the bundle folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.members import GBDT_MEMBER
from aes_core.models.spec import BACKBONE_DIR, RegressorSpec

if TYPE_CHECKING:
    from aes_core.flags import EssayFlagger

MANIFEST_FILE = "manifest.json"
ENSEMBLE_PATH = "ensemble/ensemble.json"
MEMBERS_DIR = "members"
GBDT_DIR = "gbdt"
STATS_FILE = "essay_stats.json"
STUDENT_DIR = "student"
STUDENT_MEMBER = "student"
FLAGGER_DIR = FLAGGER_EXTRA = "flagger"
FORMAT_VERSION = 1


class BundleError(FileNotFoundError):
    """The bundle is missing or incomplete; the message says what to materialize."""


class MemberEntry(BaseModel):
    """One transformer member: its fold models (averaged) and how to tokenize for it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    backbone: str
    head: str
    folds: list[str] = Field(description="fold model folders, relative to the bundle")
    spec: RegressorSpec

    @property
    def tokenizer(self) -> str:
        """The tokenizer folder (the first fold's; every fold shares the backbone's)."""
        return f"{self.folds[0]}/{BACKBONE_DIR}"


class StudentEntry(BaseModel):
    """The distilled student: one regressor that reproduces the ensemble's blended score."""

    model_config = ConfigDict(extra="forbid")

    folder: str = Field(description="regressor folder, relative to the bundle")
    spec: RegressorSpec
    backbone: str
    distilled_from: str = Field(description="Bundle.ensemble_identity() of the ensemble it "
                                "learned")
    train_essays: int = 0
    holdout_essays: int = 0
    holdout_rmse: float | None = Field(None, description="vs the blended score (1..6 scale)")
    holdout_agreement_qwk: float | None = Field(
        None, description="QWK of its scores vs the ensemble's scores on the holdout")
    seconds: float = 0.0

    @property
    def tokenizer(self) -> str:
        return f"{self.folder}/{BACKBONE_DIR}"


class ServingManifest(BaseModel):
    """What a bundle holds: members, ensemble, GBDT, statistics, versions."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    profile: str = ""
    config_hash: str = ""
    git_commit: str = ""
    versions: dict[str, str] = Field(default_factory=dict)
    ensemble: str = ENSEMBLE_PATH
    members: list[MemberEntry] = Field(default_factory=list)
    gbdt_dir: str | None = None
    essay_stats: str | None = None
    extras: dict[str, str] = Field(
        default_factory=dict, description="further named folders/files (e.g. the flagger)")
    student: StudentEntry | None = Field(None, description="the distilled student, if any")

    def member(self, name: str) -> MemberEntry:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"the bundle has no member {name!r}; it has {self.member_names()}")

    def member_names(self) -> list[str]:
        return [m.name for m in self.members] + ([GBDT_MEMBER] if self.gbdt_dir else [])


class Bundle:
    """A loaded serving bundle: its folder and manifest, with paths resolved."""

    def __init__(self, root: str | Path, manifest: ServingManifest):
        self.root = Path(root)
        self.manifest = manifest
        self._ensemble: EnsembleArtifact | None = None
        self._flagger: EssayFlagger | None = None

    @staticmethod
    def manifest_path(root: str | Path) -> Path:
        """``root/manifest.json`` (``root`` may also be the manifest file itself)."""
        root = Path(root)
        return root if root.name == MANIFEST_FILE else root / MANIFEST_FILE

    @classmethod
    def exists(cls, root: str | Path) -> bool:
        """Whether a bundle was committed at ``root`` (its manifest is written last)."""
        return cls.manifest_path(root).exists()

    @classmethod
    def load(cls, root: str | Path) -> Bundle:
        """Load ``root/manifest.json`` (``root`` may also be the manifest file itself)."""
        path = cls.manifest_path(root)
        root = path.parent
        if not path.exists():
            raise BundleError(f"no serving bundle at {root} (no {MANIFEST_FILE}): run the "
                              f"pipeline (the serving_bundle asset) first")
        manifest = ServingManifest.model_validate(json.loads(path.read_text()))
        if manifest.format_version != FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format {manifest.format_version}, this code reads "
                              f"{FORMAT_VERSION}; re-materialize serving_bundle")
        bundle = cls(root, manifest)
        bundle.validate()
        return bundle

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def ensemble(self) -> EnsembleArtifact:
        if self._ensemble is None:
            self._ensemble = EnsembleArtifact.load(self.path(self.manifest.ensemble))
        return self._ensemble

    def member_dirs(self) -> dict[str, list[Path]]:
        """Transformer member name -> fold model folders (absolute), in fold order."""
        return {m.name: [self.path(f) for f in m.folds] for m in self.manifest.members}

    @property
    def gbdt_dir(self) -> Path | None:
        return self.path(self.manifest.gbdt_dir) if self.manifest.gbdt_dir else None

    @property
    def student_dir(self) -> Path | None:
        st = self.manifest.student
        return self.path(st.folder) if st else None

    def student_ensemble(self) -> EnsembleArtifact:
        """The student as a one-member ensemble with the ensemble's thresholds."""
        if self.manifest.student is None:
            raise BundleError(f"serving bundle {self.root} has no distilled student: "
                              f"materialize student_model (or set serving.scorer: ensemble)")
        source = self.manifest.student.distilled_from
        return EnsembleArtifact(members=[STUDENT_MEMBER], weights=[1.0],
                                thresholds=list(self.ensemble.thresholds), n_folds=1,
                                notes=f"student distilled from the bundle of {source}")

    def ensemble_identity(self) -> str:
        """What scores in this bundle: the ensemble file, the members' fold folders, the GBDT
        folder (a student learned exactly this; unchanged when only the time changes)."""
        import hashlib

        h = hashlib.sha256(self.path(self.manifest.ensemble).read_bytes())
        h.update(json.dumps([m.model_dump() for m in self.manifest.members],
                            sort_keys=True).encode())
        h.update(str(self.manifest.gbdt_dir).encode())
        return h.hexdigest()[:16]

    def essay_stats(self) -> dict[str, Any] | None:
        """Typical essay statistics per score (None when the bundle has none)."""
        if not self.manifest.essay_stats:
            return None
        return json.loads(self.path(self.manifest.essay_stats).read_text())

    @property
    def flagger_dir(self) -> Path | None:
        rel = self.manifest.extras.get(FLAGGER_EXTRA)
        return self.path(rel) if rel else None

    def flagger(self) -> EssayFlagger | None:
        """The bundle's essay flagger, with the thresholds and score policy it was saved with
        (None when the bundle has none: flags were off when it was built)."""
        if self._flagger is None and self.flagger_dir is not None:
            from aes_core.flags import EssayFlagger

            self._flagger = EssayFlagger.load(self.flagger_dir)
        return self._flagger

    def version(self) -> str:
        """Changes whenever a new manifest is written (the page reloads on it)."""
        return self.manifest.created_at

    def validate(self) -> None:
        """Every file the manifest names exists, and the ensemble's members are all here."""
        problems = []
        if not self.path(self.manifest.ensemble).exists():
            problems.append(f"ensemble file {self.manifest.ensemble} is missing")
        for m in self.manifest.members:
            if not m.folds:
                problems.append(f"member {m.name} has no fold models")
            problems += [f"member {m.name}: {f} is missing" for f in m.folds
                         if not self.path(f).is_dir()]
        if self.manifest.gbdt_dir and not self.path(self.manifest.gbdt_dir).is_dir():
            problems.append(f"GBDT folder {self.manifest.gbdt_dir} is missing")
        if self.manifest.student and not self.path(self.manifest.student.folder).is_dir():
            problems.append(f"student folder {self.manifest.student.folder} is missing")
        problems += [f"{name} {rel} is missing" for name, rel in self.manifest.extras.items()
                     if not self.path(rel).exists()]
        if not problems:
            absent = [m for m in self.ensemble.members if m not in self.manifest.member_names()]
            if absent:
                problems.append(f"the ensemble's member(s) {absent} are not in the bundle")
        if problems:
            raise BundleError(f"serving bundle {self.root} is incomplete: " + "; ".join(problems))


def write_manifest(root: str | Path, manifest: ServingManifest) -> Path:
    """Write ``manifest.json`` atomically (readers see the old or the new one, never half)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    Bundle(root, manifest).validate()  # never replace a working manifest by a broken one
    path = root / MANIFEST_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2))
    tmp.replace(path)
    Bundle.load(root)  # what was written must load
    return path


def link_or_copy_tree(src: str | Path, dst: str | Path) -> Path:
    """Copy a folder, hard-linking files where the filesystem allows (no second copy on disk)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)
    return dst


def prune_members(root: str | Path, keep: list[str]) -> list[str]:
    """Delete member fold folders that the manifest no longer references; returns them."""
    base = Path(root) / MEMBERS_DIR
    keep_abs = {(Path(root) / k).resolve() for k in keep}
    removed = []
    if not base.is_dir():
        return removed
    for member in base.iterdir():
        for fold in (member.iterdir() if member.is_dir() else []):
            if fold.resolve() not in keep_abs:
                shutil.rmtree(fold, ignore_errors=True)
                removed.append(str(fold.relative_to(root)))
        if member.is_dir() and not any(member.iterdir()):
            member.rmdir()
    return removed
