"""Write a self-contained Triton model repository for an ensemble.

Layout (``variant="python"``: every model uses the Python backend, the only backend in the
``tritonserver`` shipped with nvidia-pytriton; ``variant="native"``: member models use the
``onnxruntime_onnx`` / ``tensorrt_plan`` platforms of the NVIDIA container)::

    <repo>/<backbone>__<head>__f<fold>/config.pbtxt
                                      1/model.onnx (+ model.py)  or  1/model.plan
    <repo>/scorer/config.pbtxt        TEXT (string) -> SCORE (int32), BLENDED, MEMBERS (fp64)
    <repo>/scorer/1/model.py          Python BLS: tokenize, call members, average folds, blend
    <repo>/scorer/1/scorer.json       members -> fold models, specs, tokenizer folders
    <repo>/scorer/1/ensemble.json     the EnsembleArtifact
    <repo>/scorer/1/tokenizers/<backbone>/, gbdt/ (when the ensemble has a GBDT member)
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aes_core.config import PROJECT_ROOT, ServingSection
from aes_core.export.onnx import ONNX_FILE, load_spec
from aes_core.members import GBDT_MEMBER, split_member_name
from aes_core.models.regressor import BACKBONE_DIR
from aes_core.models.tokens import WINDOW_WEIGHTS
from aes_core.serving.manifest import Bundle

TEMPLATES = Path(__file__).resolve().parent / "triton_models"
SCORER = "scorer"
KEEP = {"README.md"}


def member_model_name(member: str, fold: int) -> str:
    return f"{member}__f{fold}"


@dataclass
class RepoManifest:
    """What was written: model names per member, the variant and the repository path."""

    repo: str
    variant: str
    members: dict[str, list[str]] = field(default_factory=dict)
    scorer: str = SCORER
    plans: list[str] = field(default_factory=list)
    bundle_version: str = ""

    @property
    def backend(self) -> str:
        return f"{self.variant} (onnxruntime, CPU)" if self.variant == "python" else self.variant

    def model_names(self) -> list[str]:
        return [n for ms in self.members.values() for n in ms] + [self.scorer]


def _params(params: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
                   for k, v in params.items())


def _batching(serving: ServingSection) -> str:
    return (f"dynamic_batching {{ max_queue_delay_microseconds: {serving.max_queue_delay_us} }}\n")


def _instances(serving: ServingSection, kind: str) -> str:
    return f"instance_group [ {{ count: {serving.instance_count} kind: {kind} }} ]\n"


def member_config(name: str, serving: ServingSection, variant: str, max_length: int,
                  plan: bool = False, chunked: bool = False) -> str:
    """config.pbtxt of one fold model: INT64 [batch, seq] in, FP32 logits [batch, 1] out.

    Chunked models take INT64 [windows, seq] + FP32 ``window_weights`` [essays, windows] and
    give FP32 logits [essays]: the two leading axes differ, so Triton gets no batch axis
    (``max_batch_size: 0``) and never merges requests (each one is a whole batch already).
    """
    if variant == "python":
        head = f'name: "{name}"\nbackend: "python"\n'
        out_dims = "dims: [ -1 ]" if chunked else "dims: [ 1 ]"
        kind = "KIND_CPU"
    else:
        platform = "tensorrt_plan" if plan else "onnxruntime_onnx"
        head = f'name: "{name}"\nplatform: "{platform}"\n'
        out_dims = "dims: [ -1 ]" if chunked else "dims: [ 1 ] reshape: { shape: [ ] }"
        kind = "KIND_GPU"
    if chunked:
        inputs = ('  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1, -1 ] },\n'
                  '  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1, -1 ] },\n'
                  f'  {{ name: "{WINDOW_WEIGHTS}" data_type: TYPE_FP32 dims: [ -1, -1 ] }}\n')
        batching = "max_batch_size: 0\n"
    else:
        inputs = ('  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
                  '  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }\n')
        batching = f"max_batch_size: {serving.max_batch_size}\n"
    return (
        head + batching
        + f"input [\n{inputs}]\n"
        + f'output [\n  {{ name: "logits" data_type: TYPE_FP32 {out_dims} }}\n]\n'
        + ("" if chunked else _batching(serving)) + _instances(serving, kind)
        + _params({"intra_op_threads": str(serving.ort_threads), "max_length": str(max_length)})
    )


def scorer_config(serving: ServingSection, members: list[str], bundle_version: str = "") -> str:
    """config.pbtxt of the BLS scorer: TEXT (string) per essay; its parameters name the
    members and the bundle version it serves (clients check both)."""
    return (
        f'name: "{SCORER}"\nbackend: "python"\n'
        + f"max_batch_size: {serving.max_batch_size}\n"
        + 'input [\n  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }\n]\n'
        + "output [\n"
        + '  { name: "SCORE" data_type: TYPE_INT32 dims: [ 1 ] },\n'
        + '  { name: "BLENDED" data_type: TYPE_FP64 dims: [ 1 ] },\n'
        + f'  {{ name: "MEMBERS" data_type: TYPE_FP64 dims: [ {len(members)} ] }}\n]\n'
        + _batching(serving) + _instances(serving, "KIND_CPU")
        + _params({"members": ",".join(members), "bundle_version": bundle_version})
    )


def python_paths(aes_root: str | Path = PROJECT_ROOT) -> list[str]:
    """Paths the Python-backend stub must see: the project and this interpreter's packages."""
    return [str(aes_root)] + [p for p in sys.path if p and "site-packages" in p]


def _write_python_model(vdir: Path, template: str, aes_root: str | Path) -> None:
    shutil.copy2(TEMPLATES / template, vdir / "model.py")
    (vdir / "python_paths.txt").write_text("\n".join(python_paths(aes_root)) + "\n")


def _clear(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    for child in repo.iterdir():
        if child.name in KEEP:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def write_triton_repo(repo: str | Path, bundle: Bundle, serving: ServingSection,
                      plans: dict[str, list[str | Path | None]] | None = None,
                      aes_root: str | Path = PROJECT_ROOT) -> RepoManifest:
    """(Re)write ``repo`` for a serving bundle: one model per member fold plus the scorer.

    ``plans`` optionally maps member name -> TensorRT engine per fold (native variant only;
    a fold without an engine falls back to its ONNX model).
    """
    ensemble, members, gbdt_dir = bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir
    repo = Path(repo)
    variant = serving.triton_variant
    _clear(repo)
    manifest = RepoManifest(repo=str(repo), variant=variant, bundle_version=bundle.version())
    scorer_dir = repo / SCORER / "1"
    scorer_dir.mkdir(parents=True)
    scorer_members: dict[str, dict] = {}
    for m in ensemble.members:
        if m == GBDT_MEMBER:
            continue
        folds = [Path(p) for p in members.get(m, [])]
        if not folds:
            raise ValueError(f"member {m!r} of the ensemble has no exported folds")
        spec = load_spec(folds[0])
        backbone, _ = split_member_name(m)
        tok_dir = scorer_dir / "tokenizers" / backbone
        if not tok_dir.exists():
            shutil.copytree(folds[0] / BACKBONE_DIR, tok_dir)
        names = []
        for fold, folder in enumerate(folds):
            name = member_model_name(m, fold)
            vdir = repo / name / "1"
            vdir.mkdir(parents=True)
            plan = None
            if variant == "native" and plans and m in plans and fold < len(plans[m]):
                plan = plans[m][fold]
            if plan:
                shutil.copy2(plan, vdir / "model.plan")
                manifest.plans.append(name)
            else:
                shutil.copy2(folder / ONNX_FILE, vdir / ONNX_FILE)
            if variant == "python":
                _write_python_model(vdir, "member_model.py", aes_root)
            (repo / name / "config.pbtxt").write_text(
                member_config(name, serving, variant, spec.max_length, plan=bool(plan),
                              chunked=spec.chunking))
            names.append(name)
        manifest.members[m] = names
        scorer_members[m] = {"models": names, "tokenizer": f"tokenizers/{backbone}",
                             "spec": spec.model_dump()}
    if GBDT_MEMBER in ensemble.members:
        if gbdt_dir is None:
            raise ValueError("the ensemble has a 'gbdt' member but no gbdt_dir was given")
        shutil.copytree(gbdt_dir, scorer_dir / GBDT_MEMBER)
        manifest.members[GBDT_MEMBER] = []
    ensemble.save(scorer_dir / "ensemble.json")
    (scorer_dir / "scorer.json").write_text(json.dumps({
        "aes_root": str(aes_root), "ensemble": "ensemble.json", "members": scorer_members,
        "gbdt_dir": GBDT_MEMBER if GBDT_MEMBER in ensemble.members else None,
        "bundle_version": bundle.version(), "bundle_dir": str(bundle.root),
    }, indent=2))
    _write_python_model(scorer_dir, "scorer_model.py", aes_root)
    (repo / SCORER / "config.pbtxt").write_text(
        scorer_config(serving, list(ensemble.members), bundle.version()))
    return manifest


def repo_bundle_version(repo: str | Path) -> str | None:
    """The bundle version a generated repository was written from (None: not generated)."""
    path = Path(repo) / SCORER / "1" / "scorer.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("bundle_version", "")
