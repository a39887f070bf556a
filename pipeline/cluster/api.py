"""The HTTP API of a whole cluster, served by the controller (same auth rules as pipeline/api/server.py).

- `GET /api/cameras`: every wanted camera with its placement (worker, node, epoch) and counters there.
- `POST /api/cameras` (a camera as in the config), `DELETE /api/cameras/{name}`: place or remove it, on any node.
- `GET /api/cluster`: workers with their node, load, capacity and health; unplaced cameras; failover counters.
- `GET /metrics`: the cluster's metrics (per camera with `worker` and `node` labels, per worker load, failovers);
  `GET /metrics/workers/{name}`: one worker's full pipeline metrics (docs/cluster.md has a scrape config).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.api.server import ApiServer, install_auth, media_path_refusal
from pipeline.config import CameraConfig, PipelineConfig, ServerConfig
from pipeline.sources.decoder import SourceError, check_source


class ClusterController(Protocol):
    """What the API needs of pipeline.cluster.controller.ClusterController."""

    config: PipelineConfig

    def cameras(self) -> list[dict[str, Any]]: ...
    def cluster(self) -> dict[str, Any]: ...
    def add_camera(self, camera: CameraConfig) -> bool: ...
    def remove_camera(self, name: str) -> bool: ...
    def reconcile_now(self) -> None: ...
    def worker_metrics(self, name: str) -> bytes | None: ...


class ClusterCollector(Collector):
    """Reads the controller's view of every worker at scrape time."""

    def __init__(self, controller: ClusterController) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Any]:
        cluster = self.controller.cluster()
        frames = CounterMetricFamily("rpn_cluster_camera_frames", "Frames of a camera on its current worker",
                                     labels=["camera", "worker", "node", "kind"])
        for cam in self.controller.cameras():
            if cam["worker"] is None:
                continue
            for kind in ("decoded", "published", "dropped"):
                frames.add_metric([cam["name"], cam["worker"], cam["node"], kind], float(cam.get(kind) or 0))
        yield frames
        load = GaugeMetricFamily("rpn_cluster_worker_cameras", "Cameras placed on a worker", labels=["worker", "node"])
        healthy = GaugeMetricFamily("rpn_cluster_worker_healthy", "1 when the worker answers", labels=["worker", "node"])
        for w in cluster["workers"]:
            load.add_metric([w["name"], w["node"]], w["cameras"])
            healthy.add_metric([w["name"], w["node"]], 1.0 if w["healthy"] else 0.0)
        yield load
        yield healthy
        yield GaugeMetricFamily("rpn_cluster_unplaced_cameras", "Cameras no worker has room for",
                                value=len(cluster["unplaced"]))
        yield CounterMetricFamily("rpn_cluster_failovers", "Cameras moved off lost workers", value=cluster["failovers"])
        moves = CounterMetricFamily("rpn_cluster_camera_moves", "Cameras moved to another worker, by reason",
                                    labels=["reason"])
        for reason, count in sorted(cluster.get("moves_by_reason", {}).items()):
            moves.add_metric([reason], count)
        yield moves
        yield CounterMetricFamily("rpn_cluster_workers_lost", "Workers lost (node or actor died)",
                                  value=cluster["workers_lost"])


def create_cluster_app(controller: ClusterController, token: str | None = None) -> FastAPI:
    app = FastAPI(title="rpn-pipeline cluster", docs_url=None, redoc_url=None, openapi_url=None)
    auth = install_auth(app, token)
    registry = CollectorRegistry()
    registry.register(ClusterCollector(controller))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/cluster", dependencies=auth)
    def cluster() -> dict[str, Any]:
        return controller.cluster()

    @app.get("/api/cameras", dependencies=auth)
    def cameras() -> list[dict[str, Any]]:
        return controller.cameras()

    @app.get("/api/cameras/{name}", dependencies=auth)
    def camera(name: str) -> dict[str, Any]:
        return camera_or_404(controller, name)

    @app.post("/api/cameras", status_code=status.HTTP_201_CREATED, dependencies=auth)
    def add(camera: CameraConfig, response: Response) -> dict[str, Any]:
        """Want a camera; it is placed on the least loaded worker with room (or reported unplaced)."""
        from pipeline.runner import source_spec

        refusal = media_path_refusal(camera.url, controller.config.server.media_roots)
        if refusal is not None:  # the same rule as a single pipeline's API: local files only under media roots
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"camera {camera.name!r}: {refusal}")
        try:
            check_source(source_spec(camera, controller.config))
        except SourceError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"camera {camera.name!r}: {exc}") from exc
        if not controller.add_camera(camera):
            raise HTTPException(status.HTTP_409_CONFLICT, f"camera {camera.name!r} already exists")
        controller.reconcile_now()
        response.headers["Location"] = f"/api/cameras/{camera.name}"
        return camera_or_404(controller, camera.name)

    @app.delete("/api/cameras/{name}", dependencies=auth)
    def remove(name: str) -> dict[str, Any]:
        body = camera_or_404(controller, name)
        if not controller.remove_camera(name):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no camera {name!r}")
        return body

    @app.get("/metrics", dependencies=auth)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/workers/{name}", dependencies=auth)
    def worker_metrics(name: str) -> Response:
        data = controller.worker_metrics(name)
        if data is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no worker {name!r}")
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return app


def camera_or_404(controller: ClusterController, name: str) -> dict[str, Any]:
    for cam in controller.cameras():
        if cam["name"] == name:
            return cam
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no camera {name!r}")


def start_cluster_api(controller: ClusterController, server: ServerConfig) -> ApiServer:
    token = server.token.get_secret_value() if server.token else None
    api = ApiServer(None, server.host, server.port or 0, token, app=create_cluster_app(controller, token))
    api.start()
    return api
