"""``python -m web [--profile P] [--host H] [--port N]``: serve the teachers' page."""

from __future__ import annotations

import argparse
import sys

from aes_core.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m web", description=__doc__)
    ap.add_argument("--profile", default=None,
                    help="profile name or YAML path (default: $AES_PROFILE or cpu-small)")
    ap.add_argument("--host", default=None, help="bind address (default: web.host, 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: web.port, 8080)")
    ap.add_argument("--no-triton", action="store_true",
                    help="score in-process with ONNX Runtime even if a Triton server answers")
    args = ap.parse_args(argv)
    try:
        overrides: dict = {"web": {}}
        if args.host:
            overrides["web"]["host"] = args.host
        if args.port:
            overrides["web"]["port"] = args.port
        if args.no_triton:
            overrides["web"]["prefer_triton"] = False
        cfg = load_config(args.profile, overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2

    import uvicorn

    from web.app import create_app

    app = create_app(cfg)
    print(f"Essay scoring page for teachers: http://{cfg.web.host}:{cfg.web.port}/ "
          f"(profile {cfg.profile}, models from {cfg.storage_root})", flush=True)
    uvicorn.run(app, host=cfg.web.host, port=cfg.web.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
