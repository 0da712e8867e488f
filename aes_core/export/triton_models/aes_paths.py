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
