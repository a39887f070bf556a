"""The HTTP server inside the pipeline process: control API, health, Prometheus metrics and the live web view.

`create_app(pipeline)` builds the FastAPI app; `ApiServer` runs it with uvicorn in a daemon thread. Endpoints are
documented in docs/api.md. With a token, every endpoint but `/healthz` (liveness) and `/` (a static page that holds
no data; its scripts send the token) requires `Authorization: Bearer <token>`. Without one (loopback only), requests
must name a loopback host: a web page in the user's browser cannot reach the API through DNS rebinding.
"""
from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import Body, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from pydantic import ValidationError

from pipeline.config import AnalyticsConfig, CameraConfig, check_labels, validation_message
from pipeline.runner import Pipeline, source_spec
from pipeline.sources.decoder import SourceError, check_source
from pipeline.sources.urls import is_local_path

log = logging.getLogger(__name__)


def _page() -> str:
    return resources.files("pipeline.api").joinpath("web/index.html").read_text(encoding="utf-8")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/", "/healthz")  # need no token: liveness, and the static page (its scripts send the token)
# Documented in the OpenAPI schema (tests/test_fuzz_api.py checks every response against it): {"detail": reason}.
_DETAIL = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": what, **_DETAIL} for code, what in (
        (400, "Bad request (the reason)"), (401, "Missing or wrong bearer token"), (403, "Not allowed (the reason)"),
        (404, "Not found"), (409, "Conflict"), (429, "Too many failed authentications"),
        (503, "Not ready or stopping (the reason)"))
}
ERROR_RESPONSES[422] = {"description": "Invalid request: one line per problem, and pydantic's errors", "content": {
    "application/json": {"schema": {"type": "object", "required": ["detail", "errors"], "properties": {
        "detail": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object"}}}}}}}
AUTH_FAILURES_ALLOWED = 20  # failed authentications per client address within AUTH_WINDOW_S; beyond: 429
AUTH_WINDOW_S = 60.0


class AuthLimiter:
    """Failed authentications per client address in a sliding window. A limited address gets 429 for every request,
    right token or not, until the window has passed: otherwise guessing would go on at full speed."""

    def __init__(self, allowed: int = AUTH_FAILURES_ALLOWED, window_s: float = AUTH_WINDOW_S) -> None:
        self.allowed, self.window_s = allowed, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return 0.0
            now = time.monotonic()
            while times and now - times[0] > self.window_s:
                times.popleft()
            if not times:
                del self._failures[client]
                return 0.0
            return self.window_s - (now - times[0]) if len(times) >= self.allowed else 0.0

    def failed(self, client: str) -> int:
        """Record a failure; the number within the window."""
        with self._lock:
            if len(self._failures) > 10_000:  # many addresses: forget the oldest rather than grow without bound
                self._failures.pop(next(iter(self._failures)))
            times = self._failures.setdefault(client, deque(maxlen=self.allowed))
            times.append(time.monotonic())
            return len(times)


def media_path_refusal(url: str, roots: list[Path]) -> str | None:
    """Why the API may not open this local path (None when it may): it must lie, symlinks resolved, under one of
    `server.media_roots`. Network URLs are always fine."""
    if not is_local_path(url):
        return None
    try:
        path = Path(url.removeprefix("file:")).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        return f"cannot resolve the path: {exc}"
    if not roots:
        return "local files are not allowed through the API (no server.media_roots configured)"
    for root in roots:
        if path.is_relative_to(root.resolve()):
            return None
    return f"the path is outside server.media_roots ({', '.join(str(r) for r in roots)})"


def install_auth(app: FastAPI, token: str | None) -> list[Any]:
    """Bearer-token checks (or, without a token, loopback Host names only) and readable 422s; returns the route
    dependencies that require the token. Shared by the pipeline's and the cluster controller's API."""
    expected = token.encode() if token else None
    limiter = AuthLimiter()

    def authorized(request: Request) -> None:
        if expected is None:
            return
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait > 0:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                f"too many failed authentications from {client}: retry in {wait:.0f} s",
                                headers={"Retry-After": str(int(wait) + 1)})
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the comparison takes as long whatever prefix matches, so timing reveals nothing.
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected):
            failures = limiter.failed(client)  # logged without the token given: it may be a near miss
            log.warning("API: failed authentication from %s on %s %s (%d in %.0f s)", client, request.method,
                        request.url.path, failures, limiter.window_s)
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    if expected is not None:
        @app.middleware("http")
        async def token_first(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            # Before routing and body parsing: otherwise a caller without the token gets 422/400 for a malformed
            # body, 405 or 404, which the fuzzing of tests/test_fuzz_api.py found. The route dependencies stay.
            if request.url.path not in OPEN_PATHS:
                try:
                    authorized(request)
                except HTTPException as denied:
                    return JSONResponse({"detail": denied.detail}, denied.status_code, headers=denied.headers)
            return await call_next(request)

    if expected is None:
        @app.middleware("http")
        async def loopback_host_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            # A tokenless server trusts whoever can connect to loopback. A site that rebinds its own name to
            # 127.0.0.1 gets the user's browser connected too, but its requests still carry that name as Host.
            host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
            if host not in LOOPBACK_NAMES and not host.startswith("127."):
                return JSONResponse({"detail": f"host {host!r} refused: without a token only loopback names"},
                                    status_code=400)
            return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's 422, plus one line per problem that names the field: "body.url: String should have ...".
        errors = [_json_safe(e) for e in exc.errors()]
        reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {validation_message(e)}" for e in errors]
        return JSONResponse({"detail": "; ".join(reasons), "errors": errors},
                            status_code=422)

    return [Depends(authorized)]


def create_app(pipeline: Pipeline, token: str | None = None) -> FastAPI:
    """The app serving `pipeline`; `token` (if given) is required as a bearer token."""
    app = FastAPI(
        title="rpn-pipeline", summary="Control, health, metrics and live view of a running pipeline",
        docs_url=None, redoc_url=None, openapi_url=None,  # the Swagger/ReDoc pages load from a CDN: docs/api.md
        responses=ERROR_RESPONSES,
    )
    page = _page()
    auth = install_auth(app, token)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", dependencies=auth, responses={503: {"description": "Not ready: the reasons", "content": {
        "application/json": {"schema": {"type": "object", "required": ["ready", "reasons"]}}}}})
    def readyz() -> JSONResponse:
        """Readiness: the engine runs and Redis takes the results (or the publisher buffers within its bound)."""
        reasons = []
        stopped = [s.name for s in pipeline.stages if not s.is_alive()]
        if stopped:
            reasons.append(f"pipeline stages not running: {', '.join(stopped)}")
        pub = pipeline.publisher_stats()
        if not pub.connected and (pub.buffered_entries >= pub.max_entries or pub.buffered_bytes >= pub.max_bytes):
            reasons.append(f"Redis unreachable and the publisher's buffer is full ({pub.buffered_entries}/"
                           f"{pub.max_entries} entries, {pub.buffered_bytes}/{pub.max_bytes} bytes)")
        body: dict[str, Any] = {
            "ready": not reasons, "reasons": reasons,
            "engine": {"backend": getattr(pipeline.detector, "backend", None), "arch": pipeline.config.engine.arch},
            "publisher": {"connected": pub.connected, "buffered_entries": pub.buffered_entries,
                          "max_entries": pub.max_entries},
        }
        return JSONResponse(body, status_code=status.HTTP_200_OK if not reasons else 503)

    @app.get("/metrics", dependencies=auth, response_class=PlainTextResponse)
    def metrics() -> Response:
        data, content_type = pipeline.metrics.exposition()
        return Response(data, media_type=content_type)

    @app.get("/api/cameras", dependencies=auth)
    def list_cameras() -> list[dict[str, Any]]:
        return [_camera_json(pipeline, name, cfg) for name, cfg in pipeline.listed_cameras().items()]

    @app.get("/api/cameras/{name}", dependencies=auth)
    def get_camera(name: str) -> dict[str, Any]:
        cfg = _listed(pipeline, name)
        body = _camera_json(pipeline, name, cfg)
        body["last_frame"] = pipeline.view.latest(name)
        body["settings"] = cfg.model_dump(include={"transport", "format", "open_timeout_s", "read_timeout_s",
                                                   "realtime", "max_fps"})
        return body

    @app.post("/api/cameras", status_code=status.HTTP_201_CREATED, dependencies=auth)
    def add_camera(camera: CameraConfig, response: Response) -> dict[str, Any]:
        """Start a camera; 409 if the name is taken, 400 with the reason if it cannot work (bad scheme or input
        format, missing file, unknown host). A camera that is merely offline is accepted and retried."""
        if camera.name in pipeline.listed_cameras():
            raise HTTPException(status.HTTP_409_CONFLICT, f"camera {camera.name!r} already exists")
        refusal = media_path_refusal(camera.url, pipeline.config.server.media_roots)
        if refusal is not None:
            log.warning("API: camera %r refused: %s", camera.name, refusal)
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"camera {camera.name!r}: {refusal}")
        if problems := check_labels(camera, pipeline.detector.label_names):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"camera {camera.name!r}: {'; '.join(problems)}")
        try:
            check_source(source_spec(camera, pipeline.config))
        except SourceError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"camera {camera.name!r}: {exc}") from exc
        try:
            pipeline.add_source(camera)
        except ValueError as exc:  # lost a race with another request for the same name
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except RuntimeError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        log.info("API: camera %r added (%s)", camera.name, pipeline.ctx.stream(camera.name).source)
        response.headers["Location"] = f"/api/cameras/{camera.name}"
        return _camera_json(pipeline, camera.name, camera)

    @app.delete("/api/cameras/{name}", dependencies=auth)
    def delete_camera(name: str) -> dict[str, Any]:
        """Stop a camera (waiting for its reader to end) and take it off the list; returns its final counters."""
        cfg = _listed(pipeline, name)
        if not pipeline.remove_source(name):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"camera {name!r} did not stop in time")
        log.info("API: camera %r removed", name)
        return _camera_json(pipeline, name, cfg)

    @app.get("/api/cameras/{name}/frame.jpg", dependencies=auth, response_class=Response, responses={
        200: {"content": {"image/jpeg": {}}, "description": "JPEG"}, 304: {"description": "Not modified"}})
    def frame_jpeg(name: str, request: Request) -> Response:
        """The camera's newest processed frame with boxes, labels and track ids drawn. ETag: the frame index."""
        _listed(pipeline, name)
        found = pipeline.view.jpeg(name)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"camera {name!r} has no processed frame yet")
        data, index = found
        etag = f'"{name}-{index}-{id(pipeline):x}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Frame-Index": str(index)}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/cameras/{name}/analytics", dependencies=auth)
    def get_analytics(name: str) -> dict[str, Any]:
        """The camera's zones and lines, and their live counts (occupancy, entries, exits, in/out totals)."""
        return _analytics_json(pipeline, name)

    @app.put("/api/cameras/{name}/analytics", dependencies=auth)
    def put_analytics(name: str, body: Any = Body(...)) -> dict[str, Any]:
        """Replace the camera's zones and lines; they apply from its next frame. 400 with the reason if invalid."""
        _listed(pipeline, name)
        try:
            analytics = AnalyticsConfig.model_validate(body)
        except ValidationError as exc:
            reasons = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {validation_message(e)}" for e in exc.errors()]
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "; ".join(reasons)) from exc
        size = pipeline.view.frame_size(name)
        problems = [p for r in [*analytics.zones, *analytics.lines] if size and (p := r.outside_frame(*size))]
        problems += check_labels(analytics, pipeline.detector.label_names)
        if problems:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "; ".join(problems))
        pipeline.set_analytics(name, analytics)
        log.info("API: camera %r now has %d zone(s) and %d line(s)", name, len(analytics.zones), len(analytics.lines))
        return _analytics_json(pipeline, name)

    return app


def _analytics_json(pipeline: Pipeline, name: str) -> dict[str, Any]:
    cfg = _listed(pipeline, name)
    found = pipeline.analytics.camera(name)
    counts = found.counts() if found is not None else {"zones": {}, "lines": {}}
    return {"camera": name, "frame_size": pipeline.view.frame_size(name),
            "zones": [z.model_dump() for z in cfg.zones], "lines": [line.model_dump() for line in cfg.lines],
            "counts": counts}


def _listed(pipeline: Pipeline, name: str) -> CameraConfig:
    cfg = pipeline.listed_cameras().get(name)
    if cfg is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no camera {name!r}")
    return cfg


def _camera_json(pipeline: Pipeline, name: str, cfg: CameraConfig) -> dict[str, Any]:
    stats = pipeline.ctx.stream(name)
    latency = pipeline.view.latency_s(name)
    return {
        "name": name,
        "url": stats.source,  # redacted by the source
        "live": source_spec(cfg, pipeline.config).live,
        "running": pipeline.is_running(name),
        "state": stats.state,
        "error": stats.error,
        "fps": round(pipeline.view.fps(name), 2),
        "latency_ms": round(latency * 1000, 1) if latency is not None else None,
        "decoded": stats.decoded,
        "processed": stats.published,
        "dropped": stats.dropped,
        "drop_reasons": dict(stats.drop_reasons),
        "objects": stats.objects,
        "reconnects": stats.reconnects,
    }


def _json_safe(error: Any) -> dict[str, Any]:
    # Validation errors may carry the exception object in `ctx`; JSON wants its text. The rejected input is left
    # out: it may be a camera URL with its password.
    out = {k: v for k, v in dict(error).items() if k != "input"}
    if "ctx" in out:
        out["ctx"] = {k: str(v) for k, v in out["ctx"].items()}
    return out


class ServerError(RuntimeError):
    """The HTTP server cannot start (address in use, unknown host)."""


class ApiServer:
    """uvicorn in a daemon thread, on a socket bound up front so that errors surface at once and port 0 works."""

    def __init__(self, pipeline: Pipeline | None, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 app: FastAPI | None = None) -> None:
        """Serves `create_app(pipeline, token)`, or `app` when given (the cluster controller's)."""
        self.host = host
        try:
            self._socket = _bind(host, port)
        except OSError as exc:
            raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app if app is not None else create_app(pipeline, token), log_config=None, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=2, server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except Exception:  # the pipeline goes on without its API; say so loudly
            log.exception("HTTP server failed")

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServerError(f"HTTP server on {self.url} did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
