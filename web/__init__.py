"""The teachers' scoring page (FastAPI): ``python -m web`` serves it on 127.0.0.1:8080."""

from web.app import create_app

__all__ = ["create_app"]
