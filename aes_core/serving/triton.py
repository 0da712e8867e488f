"""A real ``tritonserver`` process on a model repository, and a Triton client scorer.

On these machines the binary is the one shipped in ``nvidia-pytriton`` (Triton 2.51, Python
backend only). Start-up needs (see ../shared/notes/toolchain.md): the Python stub for this
interpreter next to the backend, ``LD_LIBRARY_PATH`` starting with the interpreter's LIBDIR
(else model load fails with ``'_thread.RLock' object has no attribute '_recursion_count'``),
then ``nvidia_pytriton.libs``; HTTP bound to 127.0.0.1; client connections closed before
the server is stopped (else shutdown waits ~30 s).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from aes_core.config import PROJECT_ROOT
from aes_core.ensemble.artifact import EnsembleArtifact
from aes_core.models.tokens import text_batches

log = logging.getLogger(__name__)
SCORER_MODEL = "scorer"


class TritonError(RuntimeError):
    """The server could not start or a request failed; messages include the server log tail."""


def _pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed: no tritonserver binary available")
    return Path(next(iter(spec.submodule_search_locations)))


def find_tritonserver(binary: str | None = None) -> Path:
    """The tritonserver executable: ``binary``, else the one in nvidia-pytriton."""
    path = Path(binary) if binary else _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not path.exists():
        raise TritonError(f"tritonserver binary not found at {path}")
    return path


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it can be bound on 127.0.0.1, else any free port."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise TritonError("no free TCP port")


def server_ready(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Triton server at ``host:port`` answers /v2/health/ready."""
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=timeout_s) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False


def _backend_dir(tmp: Path) -> Path:
    """A backend directory with the Python backend and the stub for this interpreter."""
    src = _pytriton_dir() / "tritonserver"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"nvidia-pytriton has no Python backend stub for Python {py}")
    dst = tmp / "backends" / "python"
    dst.mkdir(parents=True)
    for f in (src / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    shutil.copy2(stub, dst / stub.name)
    return tmp / "backends"


def package_cuda_libdirs() -> list[str]:
    """The CUDA libraries pip installed beside torch (``nvidia/*/lib``: cuDNN, cuBLAS, ...).

    They go first on the server's library path, before the system's and the server's own
    copies: a torch model inside ``tritonserver`` should load the cuDNN torch was built
    against (an older cuDNN 9.x there, same soname, makes torch refuse cuDNN; the scorer then
    runs without it, see ``torch_scorer.usable_cudnn``)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [str(lib) for base in spec.submodule_search_locations
            for lib in sorted(Path(base).glob("*/lib")) if lib.is_dir()]


def server_env() -> dict[str, str]:
    """Environment for tritonserver and its Python stubs (library path, PYTHONPATH)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    pylibs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*package_cuda_libdirs(), libdir, str(pylibs),
                                                  env.get("LD_LIBRARY_PATH", "")] if p)
    paths = [str(PROJECT_ROOT)] + [p for p in sys.path if p and "site-packages" in p]
    env["PYTHONPATH"] = ":".join(dict.fromkeys(paths + env.get("PYTHONPATH", "").split(":")))
    env["PYTHONPATH"] = env["PYTHONPATH"].strip(":")
    env["AES_PYTHONPATH"] = env["PYTHONPATH"]  # read by the generated model.py files
    # AES_TRITON_PYTHONPATH (passed through when set) goes first on the models' sys.path
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class TritonServer:
    """Start/stop ``tritonserver`` on ``repo``; use as a context manager.

    Ports default to the preferred ones when free, else to free ports; ``url`` is
    ``127.0.0.1:<http port>``. Clients made with :meth:`client` are closed before stopping.
    """

    def __init__(self, repo: str | Path, http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 startup_timeout_s: float = 120.0, binary: str | None = None,
                 log_path: str | Path | None = None):
        self.repo = Path(repo)
        self.prefs = (http_port, grpc_port, metrics_port)
        self.startup_timeout_s = startup_timeout_s
        self.binary = find_tritonserver(binary)
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.metrics_url = ""
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._clients: list = []

    def _log_text(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, n: int = 40, text: str | None = None) -> str:
        """The last ``n`` lines of the server's log (``text``: the log already read)."""
        text = self._log_text() if text is None else text
        return "\n".join(text.splitlines()[-n:])

    def failed_models(self, text: str | None = None) -> str:
        """The models the server could not load, from its status table: name, status and
        error (wrapped rows joined), and the innermost frame of a Python model's traceback
        (``text``: the log already read)."""
        text = self._log_text() if text is None else text
        out: list[str] = []
        current, frames = False, 0
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("|") or len(cells) != 3:
                current = False
                continue
            name, _, status = cells
            if name:
                current, frames = "UNAVAILABLE" in status, 0
                if current:
                    out.append(f"{name}: {status}")
            elif current and status:
                if status == "At:":
                    frames = 1
                elif frames == 1:  # the first frame listed raised
                    out[-1] += f" (at {status})"
                    frames = 2
                elif not frames:
                    out[-1] += " " + status
        return "\n".join(out)

    def _start_failure(self, head: str) -> str:
        """The error of a start that failed: the models that did not load, then the log's
        tail; the log is kept outside the server's temporary folder."""
        text = self._log_text()  # read once for both
        failed, tail = self.failed_models(text), self.log_tail(text=text)
        kept = self.log_path
        if self._tmp is not None and kept is not None and kept.exists() \
                and Path(self._tmp.name) in kept.parents:
            name = f"aes_tritonserver_{os.getpid()}_{time.time_ns()}.log"
            kept = Path(tempfile.gettempdir()) / name
            shutil.copy2(self.log_path, kept)
        models = f"\nmodels that did not load:\n{failed}" if failed else ""
        return f"{head}{models}\nlog ({kept}), last lines:\n{tail}"

    def start(self) -> str:
        if not (self.repo / SCORER_MODEL / "config.pbtxt").exists():
            raise TritonError(f"{self.repo} is not a generated model repository "
                              f"(no {SCORER_MODEL}/config.pbtxt): materialize triton_repo")
        self._tmp = tempfile.TemporaryDirectory(prefix="aes_triton_")
        tmp = Path(self._tmp.name)
        if self.log_path is None:
            self.log_path = tmp / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        http = free_port(self.prefs[0])
        grpc = free_port(self.prefs[1])
        metrics = free_port(self.prefs[2])
        cmd = [str(self.binary), f"--model-repository={self.repo}",
               f"--backend-directory={_backend_dir(tmp)}", "--http-address=127.0.0.1",
               f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
               "--exit-timeout-secs=10", "--strict-readiness=true",
               "--disable-auto-complete-config", "--log-verbose=0"]
        log.info("starting %s", " ".join(cmd))
        logf = open(self.log_path, "w")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                     env=server_env(), start_new_session=True)
        logf.close()
        self.url = f"127.0.0.1:{http}"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"  # Prometheus text
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                message = self._start_failure(f"tritonserver exited with code {code} while "
                                              f"starting on {self.repo}")
                self.stop()
                raise TritonError(message)
            if server_ready(self.url, timeout_s=0.5):
                return self.url
            time.sleep(0.25)
        message = self._start_failure(
            f"tritonserver not ready within {self.startup_timeout_s:.0f} s on {self.repo}; if "
            f"its models were still loading (serving.torch_compile compiles every fold model "
            f"in every instance), raise serving.startup_timeout_s")
        self.stop()
        raise TritonError(message)

    def client(self):
        """A ``tritonclient.http.InferenceServerClient`` (closed when the server stops)."""
        import tritonclient.http as httpclient

        c = httpclient.InferenceServerClient(self.url, network_timeout=300.0,
                                             connection_timeout=60.0)
        self._clients.append(c)
        return c

    def stop(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self._clients.clear()
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            # what outlives the server in its process group: a server that exits (e.g. while
            # starting) can leave its models' stub processes behind, holding GPU memory
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=10)
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class TritonScorer:
    """Implements ``aes_core.serving.base.Scorer`` through a text model over HTTP (``scorer``,
    or ``student`` with a one-member ensemble).

    Sends the same length-sorted batches as the in-process scorer (one request each) and
    returns the server's fold-averaged MEMBERS; blending stays in ``score_frame``.
    """

    def __init__(self, url: str, ensemble: EnsembleArtifact, batch_size: int = 16,
                 client=None, bundle_version: str | None = None,
                 model: str = SCORER_MODEL):
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        self.url = url
        self.ensemble = ensemble
        self.batch_size = batch_size
        self.model = model
        self._own = client is None
        self.client = client or httpclient.InferenceServerClient(url, network_timeout=300.0)
        try:
            cfg = self.client.get_model_config(model)
        except InferenceServerException as e:
            raise TritonError(f"Triton at {url} has no model {model!r} ({e.message()}): "
                              f"regenerate triton_repo") from e
        params = cfg.get("parameters", {})
        served = params.get("members", {}).get("string_value", "")
        self.backend = params.get("backend", {}).get("string_value", "onnx_cpu")
        if served.split(",") != list(ensemble.members):
            raise TritonError(f"Triton at {url} serves members {served!r}, expected "
                              f"{','.join(ensemble.members)!r}: regenerate triton_repo")
        version = params.get("bundle_version", {}).get("string_value", "")
        if bundle_version is not None and version != bundle_version:
            # same member names, other models or thresholds: never mix them with this bundle
            raise TritonError(f"Triton at {url} serves bundle {version or 'unknown'!r}, "
                              f"expected {bundle_version!r}: regenerate triton_repo and "
                              f"restart (or reload) the server")
        max_batch = int(cfg.get("max_batch_size", 0))
        if max_batch and batch_size > max_batch:
            raise TritonError(f"request_batch_size {batch_size} exceeds the scorer's "
                              f"max_batch_size {max_batch}")

    def infer(self, texts: list[str]) -> dict[str, np.ndarray]:
        """One request: SCORE [B], BLENDED [B], MEMBERS [B, M]."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        arr = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
        inp = httpclient.InferInput("TEXT", list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr, binary_data=True)
        outs = [httpclient.InferRequestedOutput(n, binary_data=True)
                for n in ("SCORE", "BLENDED", "MEMBERS")]
        try:
            res = self.client.infer(self.model, [inp], outputs=outs)
        except InferenceServerException as e:
            raise TritonError(f"Triton at {self.url} failed to score {len(texts)} essays: "
                              f"{e.message()}") from e
        return {"SCORE": res.as_numpy("SCORE").reshape(-1),
                "BLENDED": res.as_numpy("BLENDED").reshape(-1),
                "MEMBERS": res.as_numpy("MEMBERS").reshape(len(texts), -1)}

    def predict_members(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.ensemble.members)), dtype=np.float64)
        for idx in text_batches(texts, self.batch_size):
            out[idx] = self.infer([texts[i] for i in idx])["MEMBERS"]
        return out

    def close(self) -> None:
        if self._own:
            self.client.close()
