"""Copied next to every generated Python-backend ``model.py``, which imports it first.

The Triton stub ignores PYTHONPATH: importing this module puts these paths first on
sys.path, in this order, before numpy is imported: AES_TRITON_PYTHONPATH (e.g. a numpy 1.x
folder), ``python_paths.txt`` beside it (serving.triton_python_paths, the project, the
packages), AES_PYTHONPATH.
"""

import os
import sys


def extend_path(here: str) -> None:
    paths = [p for p in os.environ.get("AES_TRITON_PYTHONPATH", "").split(os.pathsep) if p]
    listed = os.path.join(here, "python_paths.txt")
    if os.path.exists(listed):
        with open(listed) as f:
            paths += [p for p in f.read().splitlines() if p]
    paths += [p for p in os.environ.get("AES_PYTHONPATH", "").split(os.pathsep) if p]
    paths = list(dict.fromkeys(paths))
    sys.path[:] = paths + [p for p in sys.path if p not in paths]


extend_path(os.path.dirname(os.path.abspath(__file__)))


def scorer_meta(args: dict) -> tuple[str, dict]:
    """A scorer model's version folder and its ``scorer.json``, with the project first on
    sys.path (``aes_root``) so that ``aes_core`` imports."""
    import json

    here = os.path.join(args["model_repository"], args["model_version"])
    with open(os.path.join(here, "scorer.json")) as f:
        meta = json.load(f)
    root = meta.get("aes_root")
    if root and root not in sys.path:
        sys.path.insert(0, root)
    return here, meta


def require_scipy() -> None:
    """Import scipy (the GBDT member and the stacker need it) or say which numpy broke it.

    The Python-backend stub needs numpy 1.x first on the path; a host's scipy built for
    numpy 2 then fails on import, so a numpy-1 build of scipy must sit beside that numpy.
    """
    try:
        import scipy.sparse  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure has the same remedy
        import numpy

        raise RuntimeError(
            f"scipy cannot be imported with numpy {numpy.__version__} (from "
            f"{os.path.dirname(numpy.__file__)}) first on this model's path: "
            f"{type(e).__name__}: {e}. Put a scipy built for numpy {numpy.__version__[0]}.x "
            "in the same folder (serving.triton_python_paths / AES_TRITON_PYTHONPATH)") from e
