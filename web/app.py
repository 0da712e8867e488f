"""The teachers' scoring page: paste or upload essays, see scores, spread, warnings, statistics.

``create_app(cfg, scorer_factory)`` builds the FastAPI app. Scoring goes through
:func:`aes_core.serving.base.score_frame` with the same scorer as the ``submission`` asset
(by default :func:`aes_core.serving.loader.load_scorer`: Triton when a server answers, else
in-process ONNX Runtime on the latest materialized ensemble) and the serving bundle's flagger
(gaming / off-topic flags become warnings; a flagged score is capped as everywhere else).

Safety: request bodies are capped before they are read, uploads are parsed in memory, no
path from a request is ever used on the filesystem (static files are read once at start-up),
and an upload is written to disk only when the user ticks "keep a copy" (into
``cfg.web.keep_dir`` under a generated name).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aes_core.config import AesConfig, WebSection, load_config
from aes_core.data.io import DataError, load_essays
from aes_core.essay_stats import (
    STAT_LABELS,
    STAT_NAMES,
    EssayStats,
    compare_to_range,
    essay_stats,
)
from aes_core.flags import EssayFlagger
from aes_core.serving.base import ScoredEssays, Scorer, score_frame
from aes_core.serving.loader import load_bundle
from aes_core.serving.manifest import MANIFEST_FILE, BundleError
from web.essay_warnings import EssayWarning, essay_warnings, warning_codes, warning_details

ScorerFactory = Callable[[], Scorer]
log = logging.getLogger(__name__)
PASTED_ID = "pasted-essay"
STATIC_FILES = {"app.js": "application/javascript", "style.css": "text/css"}
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and small fields on top of the file itself


class ScorerUnavailable(RuntimeError):
    """No scorer could be loaded (pipeline not run yet, loader missing, ...)."""


class PasteRequest(BaseModel):
    text: str = Field(description="the essay text")
    essay_id: str | None = Field(None, max_length=200, description="optional id for the result")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class BodyLimit:
    """Reject request bodies over ``limit`` bytes early: by Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = (f"The request is too large; the limit is {self.limit:,} bytes "
                   f"({self.limit / 1e6:.1f} MB).")
        if declared is not None:
            if not declared.isdigit():
                await _error(400, "Bad Content-Length header.")(scope, receive, send)
                return
            if int(declared) > self.limit:
                await _error(413, too_big)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, too_big)
            return msg

        await self.app(scope, limited, send)


class _InMemoryMultiPart(MultiPartParser):
    """Multipart parsing that never spools to a temporary file (bodies are already capped)."""

    spool_max_size = 1 << 40


def _read_static(name: str) -> bytes:
    return resources.files("web").joinpath("static", name).read_bytes()


def _safe_label(name: str | None) -> str:
    """A display label for an uploaded file name (never used as a path)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip()[:80]
    return base or "upload.csv"


class ScoringService:
    """Holds the scorer and the typical ranges, reloading them when the pipeline rewrites them.

    The scorer is loaded on first use, retried while loading fails (the pipeline may still be
    running) and reloaded when ``version()`` changes (a newer materialized ensemble).
    """

    def __init__(self, cfg: AesConfig, factory: ScorerFactory,
                 version: Callable[[], object] | None = None):
        self.cfg = cfg
        self._factory = factory
        self._version = version or (lambda: None)
        self._scorer: Scorer | None = None
        self._loaded_version: object = None
        self._ranges: dict | None = None
        self._ranges_key: object = None
        self._ranges_error: str | None = None
        self._flagger: EssayFlagger | None = None
        self._flagger_key: object = None
        self._lock = threading.Lock()
        self._flagger_lock = threading.Lock()

    def scorer(self) -> Scorer:
        with self._lock:
            current = self._version()
            if self._scorer is None or current != self._loaded_version:
                try:
                    scorer = self._factory()
                except Exception as e:  # loader errors are shown to the user verbatim
                    if self._scorer is not None:  # mid-rewrite: keep serving the old model
                        log.warning("reloading the scorer failed (%s); keeping the loaded one", e)
                        return self._scorer
                    if isinstance(e, ScorerUnavailable):
                        raise
                    raise ScorerUnavailable(f"{type(e).__name__}: {e}") from e
                self._scorer, self._loaded_version = scorer, current
            return self._scorer

    def ranges(self) -> dict | None:
        """Typical essay statistics per score, from the serving bundle (None without one)."""
        key = bundle_version(self.cfg)()
        if key != self._ranges_key:
            self._ranges_key, self._ranges, self._ranges_error = key, None, None
            try:
                self._ranges = load_bundle(self.cfg).essay_stats()
                if self._ranges is None:
                    self._ranges_error = "the serving bundle holds no essay statistics"
            except Exception as e:  # the page works without ranges; it says why
                self._ranges_error = f"{type(e).__name__}: {e}"
        return self._ranges

    def flagger(self) -> EssayFlagger | None:
        """The serving bundle's flagger (None when there is no bundle or it has none),
        reloaded with each new bundle; a broken one keeps the last good flagger."""
        key = bundle_version(self.cfg)()
        with self._flagger_lock:
            if key != self._flagger_key:
                try:
                    flagger = load_bundle(self.cfg).flagger()
                except BundleError:  # no bundle: the scorer reports that
                    flagger = None
                except Exception as e:
                    if self._flagger is not None:
                        log.warning("reloading the flagger failed (%s); keeping the loaded one",
                                    e)
                        return self._flagger
                    raise ScorerUnavailable(f"the serving bundle's flagger does not load: "
                                            f"{type(e).__name__}: {e}") from e
                self._flagger, self._flagger_key = flagger, key
            return self._flagger

    def score(self, essays: pd.DataFrame) -> ScoredEssays:
        scorer = self.scorer()
        flagger = self.flagger()
        with self._lock:
            return score_frame(scorer, essays, flagger)

    def describe(self, scored: ScoredEssays, i: int, text: str) -> dict[str, Any]:
        """One essay's full result: score, spread, warnings, members, stats vs typical range."""
        ens = self.scorer().ensemble
        own = essay_stats(text)
        stats = own.as_dict()
        score = int(scored.score[i])
        ranges = (self.ranges() or {}).get("ranges", {}).get(str(score), {})
        return {
            "essay_id": scored.essay_id[i],
            "score": score,
            "blended": round(float(scored.blended[i]), 4),
            "spread": [round(float(p), 4) for p in scored.spread[i]],
            "warnings": [x.model_dump() for x in warnings_of(scored, i, own, self.cfg.web)],
            **({"model_score": int(scored.model_score[i]),
                "flags": scored.flag_results[i].names} if scored.flagged else {}),
            "members": [
                {"name": m, "weight": round(float(w), 4),
                 "prediction": round(float(scored.member_preds[i, j]), 4)}
                for j, (m, w) in enumerate(zip(scored.members, ens.weights, strict=True))
            ],
            "stats": [
                {"name": n, "label": STAT_LABELS[n], "value": stats[n],
                 "typical": ranges.get(n), "status": compare_to_range(stats[n], ranges.get(n))}
                for n in STAT_NAMES
            ],
        }

    def info(self) -> dict[str, Any]:
        w = self.cfg.web
        out: dict[str, Any] = {
            "profile": self.cfg.profile,
            "limits": {"max_essay_chars": w.max_essay_chars,
                       "max_upload_bytes": w.max_upload_bytes, "max_rows": w.max_rows,
                       "min_words": w.min_words},
            "ready": False,
        }
        try:
            ens = self.scorer().ensemble
            out.update(ready=True, members=list(ens.members), weights=list(ens.weights),
                       thresholds=list(ens.thresholds), oof_qwk=dict(ens.oof_qwk))
        except ScorerUnavailable as e:
            out["error"] = str(e)
        rng = self.ranges()
        out["typical_ranges"] = (
            {k: rng[k] for k in ("source_kind", "n_essays", "low_q", "high_q")} if rng
            else {"error": self._ranges_error}
        )
        return out


def warnings_of(scored: ScoredEssays, i: int, stats: EssayStats,
                web: WebSection) -> list[EssayWarning]:
    """Essay ``i``'s warnings: its flags (and whether they capped its score) + its statistics."""
    if not scored.flagged:
        return essay_warnings(stats, web)
    return essay_warnings(stats, web, scored.flag_results[i], int(scored.score[i]),
                          int(scored.model_score[i]))


def scored_table(scored: ScoredEssays, texts: list[str], web: WebSection) -> pd.DataFrame:
    """The scored table: id, score, warnings (lists), flags, flag evidence and model score
    (with flags), blended, members, spread, statistics."""
    df = scored.to_frame(with_members=True)
    for col in ["blended", *scored.members]:
        df[col] = df[col].astype(float).round(4)
    own = [essay_stats(t) for t in texts]
    df.insert(df.columns.get_loc("score") + 1, "warnings",
              pd.Series([[x.model_dump() for x in warnings_of(scored, i, s, web)]
                         for i, s in enumerate(own)], index=df.index, dtype=object))
    for k in range(6):
        df[f"p_score_{k + 1}"] = np.round(scored.spread[:, k], 4) if len(df) else []
    stats = pd.DataFrame([s.as_dict() for s in own], columns=list(STAT_NAMES) + ["sentences"])
    for n in STAT_NAMES:
        df[n] = stats[n].to_numpy()
    return df


def csv_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`scored_table` for a CSV file: warnings as codes plus a ``warning_details`` text."""
    out = table.copy()
    at = out.columns.get_loc("warnings")
    out.insert(at + 1, "warning_details", table["warnings"].map(warning_details))
    out["warnings"] = table["warnings"].map(warning_codes)
    return out


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def bundle_version(cfg: AesConfig) -> Callable[[], object]:
    """Changes whenever the pipeline commits a new serving bundle (its manifest)."""
    path = cfg.bundle_dir / MANIFEST_FILE
    return lambda: _mtime(path)


def default_scorer_factory(cfg: AesConfig) -> ScorerFactory:
    """The scorer of the ``submission`` asset: Triton when it answers, else ONNX Runtime."""

    def make() -> Scorer:
        from aes_core.serving.loader import load_scorer

        try:
            return load_scorer(cfg, prefer_triton=cfg.web.prefer_triton,
                               triton_url=cfg.web.triton_url)
        except FileNotFoundError as e:
            raise ScorerUnavailable(
                f"no trained ensemble found ({e}). Run the default pipeline first "
                f"(see README), then reload this page."
            ) from e

    return make


def create_app(cfg: AesConfig | None = None,
               scorer_factory: ScorerFactory | None = None) -> FastAPI:
    """The FastAPI app; ``scorer_factory`` defaults to the pipeline's latest ensemble.

    With the default factory a newly materialized ensemble is picked up without a restart;
    a custom factory is called once (and again only after it failed).
    """
    cfg = cfg or load_config()
    w = cfg.web
    if scorer_factory is None:
        service = ScoringService(cfg, default_scorer_factory(cfg), bundle_version(cfg))
    else:
        service = ScoringService(cfg, scorer_factory)
    static = {name: _read_static(name) for name in STATIC_FILES}
    index_html = _read_static("index.html")

    app = FastAPI(title="aes: essay scoring for teachers", docs_url="/api/docs",
                  redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=w.max_upload_bytes + MULTIPART_OVERHEAD)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
            parts.append(f"{loc}: {e['msg']}")
        return _error(422, "Invalid request: " + "; ".join(parts))

    @app.exception_handler(DataError)
    async def _data_error(_: Request, exc: DataError) -> JSONResponse:
        return _error(400, str(exc), rows=exc.rows, field=exc.field or None)

    @app.exception_handler(ScorerUnavailable)
    async def _no_scorer(_: Request, exc: ScorerUnavailable) -> JSONResponse:
        return _error(503, f"The scoring model is not available: {exc}")

    @app.get("/", response_class=HTMLResponse)
    def index() -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8")

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:  # a fixed set read at start-up: request paths never hit disk
            raise HTTPException(404, f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return service.info()

    @app.post("/api/score")
    def score_one(req: PasteRequest) -> dict[str, Any]:
        text = req.text
        if not text.strip():
            raise HTTPException(400, "The essay is empty: paste the essay text first.")
        if len(text) > w.max_essay_chars:
            raise HTTPException(413, f"The essay has {len(text):,} characters; the limit is "
                                     f"{w.max_essay_chars:,}.")
        if "\x00" in text:
            raise HTTPException(400, "The essay contains a NUL character; paste plain text.")
        essay_id = (req.essay_id or PASTED_ID).strip() or PASTED_ID
        scored = service.score(pd.DataFrame({"essay_id": [essay_id], "full_text": [text]}))
        return service.describe(scored, 0, text)

    async def _read_upload(request: Request, name: str | None) -> tuple[bytes, str]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            parser = _InMemoryMultiPart(request.headers, request.stream(), max_files=1,
                                        max_fields=10)
            try:
                form = await parser.parse()
            except MultiPartException as e:
                raise HTTPException(400, f"Bad form upload: {e.message}") from e
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "No file in the form: send the CSV as field 'file'.")
            raw = await upload.read()
            label = _safe_label(name or upload.filename)
            await upload.close()
        else:
            raw = await request.body()
            label = _safe_label(name)
        if len(raw) > w.max_upload_bytes:
            raise HTTPException(413, f"The file has {len(raw):,} bytes; the limit is "
                                     f"{w.max_upload_bytes:,} bytes.")
        if not raw.strip():
            raise HTTPException(400, f"{label}: the file is empty.")
        return raw, label

    def _validate(raw: bytes, label: str) -> pd.DataFrame:
        """The upload as a valid Essays table (schema rules + the web limits), else DataError."""
        return load_essays(raw, name=label, max_unpacked_bytes=w.max_upload_bytes * 10,
                           max_rows=w.max_rows, max_text_chars=w.max_essay_chars)

    def _keep(raw: bytes, table: pd.DataFrame | None) -> str:
        """Save an upload (and its scores) under a generated name; never a requested path."""
        folder = Path(w.keep_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"upload-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        suffix = ".csv.gz" if raw[:2] == b"\x1f\x8b" else ".csv"
        (folder / f"{stem}{suffix}").write_bytes(raw)
        if table is not None:
            csv_table(table).to_csv(folder / f"{stem}-scored.csv", index=False)
        return stem

    def _rows_json(table: pd.DataFrame) -> list[dict[str, Any]]:
        return json.loads(table.to_json(orient="records", double_precision=4))

    @app.post("/api/score-csv")
    async def score_csv(
        request: Request,
        name: str | None = Query(None, max_length=300, description="file name to show"),
        keep: bool = Query(False, description="save the upload and scores in web.keep_dir"),
        format: str = Query("ndjson", pattern="^(ndjson|json|csv)$",
                            description="ndjson: progress stream; json; csv: scored file"),
    ) -> Response:
        """Score an uploaded CSV (essay_id, full_text): raw body or multipart field ``file``."""
        raw, label = await _read_upload(request, name)
        essays = await run_in_threadpool(_validate, raw, label)
        await run_in_threadpool(service.scorer)  # 503 before anything streams without a model
        ids, texts = essays["essay_id"].tolist(), essays["full_text"].tolist()
        step = w.batch_rows

        def score_all() -> Iterator[pd.DataFrame]:
            for start in range(0, len(essays), step):
                part = essays.iloc[start:start + step]
                yield scored_table(service.score(part), texts[start:start + step], w)

        if format != "ndjson":
            table = pd.concat(await run_in_threadpool(lambda: list(score_all())),
                              ignore_index=True)
            kept = await run_in_threadpool(_keep, raw, table) if keep else None
            if format == "csv":
                out_name = "scored_" + re.sub(r"(\.csv)?(\.gz)?$", "", label) + ".csv"
                headers = {"Content-Disposition": f'attachment; filename="{out_name}"'}
                if kept:
                    headers["X-Kept-As"] = kept
                return Response(csv_table(table).to_csv(index=False), media_type="text/csv",
                                headers=headers)
            return JSONResponse({"name": label, "total": len(table), "kept_as": kept,
                                 "rows": _rows_json(table)})

        def stream() -> Iterator[str]:
            yield json.dumps({"type": "start", "name": label, "total": len(ids)}) + "\n"
            parts = []
            try:
                for part in score_all():
                    parts.append(part)
                    done = sum(len(p) for p in parts)
                    yield json.dumps({"type": "rows", "done": done, "total": len(ids),
                                      "rows": _rows_json(part)}) + "\n"
                kept = _keep(raw, pd.concat(parts, ignore_index=True)) if keep else None
            except Exception as e:  # the stream has started: report in-band
                yield json.dumps({"type": "error", "error": f"Scoring failed: {e}"}) + "\n"
                return
            yield json.dumps({"type": "done", "total": len(ids), "kept_as": kept}) + "\n"

        return StreamingResponse(stream(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store"})

    return app


__all__ = ["create_app", "csv_table", "default_scorer_factory", "ScorerUnavailable",
           "scored_table"]
