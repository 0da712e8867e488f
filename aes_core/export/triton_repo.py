"""Write a self-contained Triton model repository for an ensemble.

``serving.backend`` chooses how members run (``auto`` = ``torch_gpu`` where CUDA is
available). ``torch_gpu``: ONE Python-backend model ``scorer`` loads every fold model of the
bundle with PyTorch (``aes_core.serving.torch_scorer``: one tokenization per backbone, all fold
models on the same device batch, bf16 autocast, SDPA, optional torch.compile) on the GPU
(``instance_group`` KIND_GPU; KIND_CPU and fp32 on a host without CUDA) and blends::

    <repo>/scorer/config.pbtxt        TEXT (string) -> SCORE (int32), BLENDED, MEMBERS (fp64)
    <repo>/scorer/1/model.py          torch_scorer_model.py
    <repo>/scorer/1/scorer.json       backend, members -> fold folders, scorer options
    <repo>/scorer/1/members/<member>/f<k>/   regressor folders (hard links into the bundle)
    <repo>/scorer/1/ensemble.json, gbdt/

``onnx_cpu`` (``variant="python"``: every model uses the Python backend, the only backend in
the ``tritonserver`` shipped with nvidia-pytriton; ``variant="native"``: member models use the
``onnxruntime_onnx`` / ``tensorrt_plan`` platforms of the NVIDIA container)::

    <repo>/<backbone>__<head>__f<fold>/config.pbtxt
                                      1/model.onnx (+ model.py)  or  1/model.plan
    <repo>/scorer/config.pbtxt        TEXT (string) -> SCORE (int32), BLENDED, MEMBERS (fp64)
    <repo>/scorer/1/model.py          Python BLS: tokenize, call members, average folds, blend
    <repo>/scorer/1/scorer.json       members -> fold models, specs, tokenizer folders
    <repo>/scorer/1/ensemble.json     the EnsembleArtifact
    <repo>/scorer/1/tokenizers/<backbone>/, gbdt/ (when the ensemble has a GBDT member)

Either way, a bundle with a distilled student also gets the model ``student`` (same inputs and
outputs as ``scorer``, the torch template, a one-member ensemble with the ensemble's
thresholds). Every generated ``model.py`` puts ``serving.triton_python_paths`` (then the env
variable ``AES_TRITON_PYTHONPATH`` at server start) first on ``sys.path``.
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
from aes_core.serving.manifest import STUDENT_MEMBER, Bundle, link_or_copy_tree
from aes_core.serving.torch_scorer import TORCH_GPU, cuda_available, resolve_backend

TEMPLATES = Path(__file__).resolve().parent / "triton_models"
SCORER = "scorer"
STUDENT = "student"
KEEP = {"README.md"}
TORCH_TEMPLATE = "torch_scorer_model.py"
PATHS_MODULE = "aes_paths.py"


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
    serving_backend: str = "onnx_cpu"
    instance_kind: str = "KIND_CPU"
    student: str | None = None

    @property
    def backend(self) -> str:
        if self.serving_backend == TORCH_GPU:
            where = "CUDA" if self.instance_kind == "KIND_GPU" else "CPU, no CUDA"
            return f"{TORCH_GPU} (python backend, torch on {where})"
        return f"{self.variant} (onnxruntime, CPU)" if self.variant == "python" else self.variant

    def model_names(self) -> list[str]:
        names = [n for ms in self.members.values() for n in ms] + [self.scorer]
        return list(dict.fromkeys(names + ([self.student] if self.student else [])))


def _params(params: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
                   for k, v in params.items())


def _batching(serving: ServingSection) -> str:
    return (f"dynamic_batching {{ max_queue_delay_microseconds: {serving.max_queue_delay_us} }}\n")


def _instances(serving: ServingSection, kind: str, name: str = SCORER) -> str:
    count = serving.instance_count
    if name == STUDENT and serving.student_instance_count is not None:
        count = serving.student_instance_count
    return f"instance_group [ {{ count: {count} kind: {kind} }} ]\n"


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


def scorer_config(serving: ServingSection, members: list[str], name: str = SCORER,
                  kind: str = "KIND_CPU", backend: str = "onnx_cpu",
                  bundle_version: str = "") -> str:
    """config.pbtxt of a text model (``scorer``, ``student``): TEXT (string) per essay; its
    parameters name the members, the backend and the bundle version it serves (clients
    check them)."""
    return (
        f'name: "{name}"\nbackend: "python"\n'
        + f"max_batch_size: {serving.max_batch_size}\n"
        + 'input [\n  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }\n]\n'
        + "output [\n"
        + '  { name: "SCORE" data_type: TYPE_INT32 dims: [ 1 ] },\n'
        + '  { name: "BLENDED" data_type: TYPE_FP64 dims: [ 1 ] },\n'
        + f'  {{ name: "MEMBERS" data_type: TYPE_FP64 dims: [ {len(members)} ] }}\n]\n'
        + _batching(serving) + _instances(serving, kind, name)
        + _params({"members": ",".join(members), "backend": backend,
                   "bundle_version": bundle_version})
    )


def python_paths(aes_root: str | Path = PROJECT_ROOT, first: list[str] | None = None) -> list[str]:
    """Paths the Python-backend stub must see: ``first`` (``serving.triton_python_paths``),
    the project and this interpreter's packages."""
    paths = list(first or []) + [str(aes_root)]
    return list(dict.fromkeys(paths + [p for p in sys.path if p and "site-packages" in p]))


def _write_python_model(vdir: Path, template: str, aes_root: str | Path,
                        first: list[str] | None = None) -> None:
    shutil.copy2(TEMPLATES / template, vdir / "model.py")
    shutil.copy2(TEMPLATES / PATHS_MODULE, vdir / PATHS_MODULE)  # model.py imports it first
    (vdir / "python_paths.txt").write_text("\n".join(python_paths(aes_root, first)) + "\n")


def torch_options(serving: ServingSection) -> dict:
    """The scorer options the torch template passes to ``TorchScorer``."""
    return {"dtype": serving.torch_dtype, "compile": serving.torch_compile != "off",
            "gpu_batch_size": serving.gpu_batch_size, "merge_requests": serving.merge_requests,
            "gbdt_workers": serving.gbdt_workers, "token_cache_size": serving.token_cache_size,
            "token_cache_dir": serving.token_cache_dir,
            "chars_per_token": serving.pretruncate_chars_per_token,
            "word_cache": serving.tokenizer_word_cache,
            "threads": serving.torch_threads, "tokenizer_threads": serving.tokenizer_threads,
            "cudnn_attention": serving.cudnn_attention, "cuda_graphs": serving.cuda_graphs,
            "graph_bucket": serving.cuda_graph_bucket,
            "graph_streams": serving.cuda_graph_streams, "model_streams": serving.model_streams}


def _regressor_copy(src: Path, dst: Path) -> None:
    """A regressor folder (weights, spec, tokenizer), hard-linked; the ONNX file left out."""
    link_or_copy_tree(src, dst)
    for extra in (ONNX_FILE, ONNX_FILE + ".data"):
        if (dst / extra).exists():
            (dst / extra).unlink()


def _write_torch_model(repo: Path, name: str, serving: ServingSection, ensemble,
                       members: dict[str, list[Path]], gbdt_dir: Path | None, bundle: Bundle,
                       aes_root: str | Path, kind: str) -> None:
    """One text model (``scorer`` or ``student``) running the torch template."""
    vdir = repo / name / "1"
    vdir.mkdir(parents=True)
    listed = {}
    for m in ensemble.members:
        if m == GBDT_MEMBER:
            continue
        folds = members.get(m) or []
        if not folds:
            raise ValueError(f"member {m!r} of the ensemble has no fold models")
        listed[m] = {"folds": []}
        for k, folder in enumerate(folds):
            rel = f"members/{m}/f{k}"
            _regressor_copy(Path(folder), vdir / rel)
            listed[m]["folds"].append(rel)
    if GBDT_MEMBER in ensemble.members:
        if gbdt_dir is None:
            raise ValueError("the ensemble has a 'gbdt' member but no gbdt_dir was given")
        link_or_copy_tree(gbdt_dir, vdir / GBDT_MEMBER)
    ensemble.save(vdir / "ensemble.json")
    (vdir / "scorer.json").write_text(json.dumps({
        "aes_root": str(aes_root), "backend": TORCH_GPU, "ensemble": "ensemble.json",
        "members": listed, "gbdt_dir": GBDT_MEMBER if GBDT_MEMBER in ensemble.members else None,
        "bundle_version": bundle.version(), "bundle_dir": str(bundle.root),
        "instance_kind": kind, "torch": torch_options(serving), "python": sys.executable,
    }, indent=2))
    _write_python_model(vdir, TORCH_TEMPLATE, aes_root, serving.triton_python_paths)
    (repo / name / "config.pbtxt").write_text(
        scorer_config(serving, list(ensemble.members), name=name, kind=kind, backend=TORCH_GPU,
                      bundle_version=bundle.version()))


def _clear(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    for child in repo.iterdir():
        if child.name in KEEP:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def write_triton_repo(repo: str | Path, bundle: Bundle, serving: ServingSection,
                      plans: dict[str, list[str | Path | None]] | None = None,
                      aes_root: str | Path = PROJECT_ROOT) -> RepoManifest:
    """(Re)write ``repo`` for a serving bundle (see the module docstring).

    ``torch_gpu``: one model ``scorer`` with every fold model; ``onnx_cpu``: one model per
    member fold plus the BLS scorer. ``plans`` optionally maps member name -> TensorRT engine
    per fold (onnx_cpu, native variant only; a fold without an engine falls back to its ONNX
    model). A bundle with a student also gets the model ``student``.
    """
    ensemble, members, gbdt_dir = bundle.ensemble, bundle.member_dirs(), bundle.gbdt_dir
    repo = Path(repo)
    variant = serving.triton_variant
    backend = resolve_backend(serving.backend)
    kind = "KIND_GPU" if cuda_available() else "KIND_CPU"
    _clear(repo)
    manifest = RepoManifest(repo=str(repo), variant=variant, bundle_version=bundle.version(),
                            serving_backend=backend,
                            instance_kind=kind if backend == TORCH_GPU else "KIND_CPU")
    if bundle.manifest.student is not None:
        _write_torch_model(repo, STUDENT, serving, bundle.student_ensemble(),
                           {STUDENT_MEMBER: [bundle.student_dir]}, None, bundle, aes_root, kind)
        manifest.student = STUDENT
    if backend == TORCH_GPU:
        _write_torch_model(repo, SCORER, serving, ensemble, members, gbdt_dir, bundle, aes_root,
                           kind)
        manifest.members = {m: [SCORER] if m != GBDT_MEMBER else [] for m in ensemble.members}
        return manifest
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
                _write_python_model(vdir, "member_model.py", aes_root,
                                    serving.triton_python_paths)
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
        "backend": backend, "chars_per_token": serving.pretruncate_chars_per_token,
        "word_cache": serving.tokenizer_word_cache,
        "token_cache_size": serving.token_cache_size,
        "token_cache_dir": serving.token_cache_dir,
    }, indent=2))
    _write_python_model(scorer_dir, "scorer_model.py", aes_root, serving.triton_python_paths)
    (repo / SCORER / "config.pbtxt").write_text(scorer_config(serving, list(ensemble.members),
                                      bundle_version=bundle.version()))
    return manifest


def repo_backend(repo: str | Path) -> str | None:
    """The serving backend a generated repository runs (None: not generated)."""
    path = Path(repo) / SCORER / "1" / "scorer.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("backend", "onnx_cpu")


def repo_bundle_version(repo: str | Path) -> str | None:
    """The bundle version a generated repository was written from (None: not generated)."""
    path = Path(repo) / SCORER / "1" / "scorer.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("bundle_version", "")
