"""Cluster mode against a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, 3 worker nodes),
real RTSP cameras (GStreamer), real files, the real detector and a real Redis.

One cluster serves the module (starting one costs tens of seconds on 2 cores); each test adds its own cameras and
removes them at the end. The tests run in file order: the node-kill test leaves the cluster with a replacement node.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

ray = pytest.importorskip("ray", reason="cluster mode needs the `cluster` extra (make test installs it)")

from pipeline.cluster.controller import worker_name  # noqa: E402
from pipeline.cluster.session import ClusterSession  # noqa: E402
from pipeline.cluster.state import ClusterState  # noqa: E402
from pipeline.config import CameraConfig, PipelineConfig, load_config  # noqa: E402
from pipeline.events.contract import detections_key, events_key, owner_key  # noqa: E402
from tests.redis_servers import validate_streams  # noqa: E402
from tests.rtsp import GSTREAMER_MISSING, RtspServer, gstreamer_available, make_camera_file  # noqa: E402
from tests.waiting import wait_for

CAMERAS = [f"cam{i}" for i in range(6)]


@dataclass
class Cluster:
    session: ClusterSession
    config: PipelineConfig
    client: redis.Redis
    prefix: str

    @property
    def controller(self) -> Any:
        return self.session.controller

    def call(self, method: str, *args: object, timeout: float = 60) -> Any:
        return self.session.ask(method, *args, timeout=timeout)  # waits while Ray restarts the controller

    def cameras(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.call("cameras")}

    def events(self, *types: str, since: str = "-") -> list[dict[str, str]]:
        return [f for _, f in self.client.xrange(events_key(self.prefix), since) if f["type"] in types]

    def worker_status(self, worker: str) -> dict[str, Any]:
        handle = ray.get_actor(worker, namespace=self.config.cluster.namespace)
        return ray.get(handle.status.remote(), timeout=60)  # type: ignore[no-any-return]

    def ready_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.call("cluster")["workers"] if w["ready"]]


def frame_runs(client: redis.Redis, key: str) -> list[list[int]]:
    """A stream's frame indexes split where they start again: one run per worker that published the camera."""
    runs: list[list[int]] = []
    for _, fields in client.xrange(key):
        index = int(fields["frame"])
        if not runs or index <= runs[-1][-1]:
            runs.append([])
        runs[-1].append(index)
    return runs


@pytest.fixture(scope="module")
def cluster(redis_server: str) -> Iterator[Cluster]:
    prefix = f"k{uuid.uuid4().hex[:8]}"
    config = load_config(data={
        "redis": {"url": redis_server, "prefix": prefix},
        "engine": {"threads": 1},
        "batching": {"max_batch": 2},
        "server": {"port": 0},
        "cluster": {"max_cameras_per_worker": 3},
        "runtime": {"reconnect": {"initial_s": 0.2, "max_s": 1.0, "jitter": 0.2, "healthy_s": 0.5}},
    })
    session = ClusterSession.start("local:3", config)
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    try:
        c = Cluster(session, config, client, prefix)
        wait_for(lambda: len(c.ready_workers()) == 3, 180, "3 workers to load their engine")
        yield c
    finally:
        session.shutdown()
        try:
            validate_streams(client, prefix)  # every entry any worker or the controller wrote fits the schema
        finally:
            client.close()


@pytest.fixture(scope="module")
def rtsp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspServer]:
    if not gstreamer_available():
        pytest.skip(GSTREAMER_MISSING)
    clip = make_camera_file(tmp_path_factory.mktemp("cluster") / "cam.h264", frames=50, width=320, height=240, seed=12)
    with RtspServer({f"/{name}": clip for name in CAMERAS}) as server:
        yield server


def live_camera(rtsp: RtspServer, name: str, mount: str | None = None) -> CameraConfig:
    return CameraConfig(name=name, url=rtsp.url(f"/{mount or name}"), max_fps=2, read_timeout_s=3, open_timeout_s=5)


def test_controller_killed_and_restarted_keeps_cameras_where_they_run(cluster: Cluster, rtsp: RtspServer) -> None:
    names = ["keep0", "keep1", "keep2"]
    for i, name in enumerate(names):
        assert cluster.call("add_camera", live_camera(rtsp, name, CAMERAS[i]))
    state = ClusterState(cluster.client, cluster.prefix)
    wait_for(lambda: all(cluster.client.xlen(detections_key(cluster.prefix, n)) >= 2 for n in names), 90,
             "the cameras to publish")
    before = {n: state.placements()[n] for n in names}
    started = cluster.call("ready")["started_at"]
    last_event = cluster.client.xrevrange(events_key(cluster.prefix), count=1)[0][0]

    ray.kill(cluster.controller, no_restart=False)  # Ray restarts the detached actor; its state is in Redis
    restarted = wait_for(lambda: _ready_after(cluster, started), 120, "the controller to come back")
    api = restarted["api"]
    body = wait_for(lambda: _get(api, "/api/cameras"), 30, "the restarted controller's API")
    assert {c["name"]: (c["worker"], c["epoch"]) for c in body if c["name"] in names} == \
        {n: (p.worker, p.epoch) for n, p in before.items()}
    # A few reconcile rounds later: still nothing moved, no placement event, and the cameras kept publishing.
    lengths = {n: cluster.client.xlen(detections_key(cluster.prefix, n)) for n in names}
    wait_for(lambda: all(cluster.client.xlen(detections_key(cluster.prefix, n)) > lengths[n] for n in names), 60,
             "the cameras to keep publishing")
    assert {n: state.placements()[n] for n in names} == before
    placement_events = [f for _, f in cluster.client.xrange(events_key(cluster.prefix), f"({last_event}")
                        if f["type"] in ("camera_assigned", "camera_moved", "camera_unplaced")]
    assert placement_events == []
    for name in names:
        assert cluster.call("remove_camera", name)
    assert not any(n in cluster.cameras() for n in names)


def _ready_after(cluster: Cluster, started: float) -> dict[str, Any] | None:
    try:
        ready = cluster.call("ready", timeout=5)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    return ready if ready["started_at"] > started else None  # type: ignore[no-any-return]


def _get(api: str, path: str) -> Any:
    try:
        response = httpx.get(api + path, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_node_killed_its_cameras_publish_again_on_survivors(cluster: Cluster, rtsp: RtspServer) -> None:
    api = cluster.call("ready")["api"]
    for name in CAMERAS:  # through the HTTP API, as a user would
        response = httpx.post(f"{api}/api/cameras", json=live_camera(rtsp, name).model_dump(), timeout=30)
        assert response.status_code == 201, response.text
    wait_for(lambda: all(cluster.client.xlen(detections_key(cluster.prefix, n)) >= 2 for n in CAMERAS), 120,
             "all 6 cameras to publish")
    cameras = _get(api, "/api/cameras")
    nodes = {c["name"]: c["node"] for c in cameras}
    assert sorted(list(nodes.values()).count(n) for n in set(nodes.values())) == [2, 2, 2]  # spread by load

    victim_node = nodes["cam0"]
    victims = sorted(n for n, node in nodes.items() if node == victim_node)
    node = next(n for n in cluster.session.local.worker_nodes if n.node_id == victim_node)
    last_event = cluster.client.xrevrange(events_key(cluster.prefix), count=1)[0][0]
    killed_at = time.time()
    cluster.session.local.remove_node(node, allow_graceful=False)

    def republished(name: str) -> float | None:
        entries = cluster.client.xrevrange(detections_key(cluster.prefix, name), count=1)
        ts = float(entries[0][1]["publish_ts"]) if entries else 0.0
        return ts - killed_at if ts > killed_at and cluster.cameras()[name]["node"] != victim_node else None

    failover = {n: wait_for(lambda n=n: republished(n), 60, f"{n} to publish again") for n in victims}
    print(f"failover after a hard node kill: {', '.join(f'{n} {s:.1f} s' for n, s in failover.items())}")
    moved = [f for _, f in cluster.client.xrange(events_key(cluster.prefix), f"({last_event}")
             if f["type"] == "camera_moved"]
    assert sorted(f["camera"] for f in moved) == victims, (last_event, cluster.events("camera_moved", "camera_assigned"))
    assert all(f["reason"] == "node_died" and f["from_node"] == victim_node and f["node"] != victim_node
               for f in moved)
    survivors = {c["node"] for c in cluster.cameras().values()}
    assert victim_node not in survivors and len(survivors) == 2

    # While the node is down the two survivors are full (3 cameras each): a new camera is unplaced, not forced.
    response = httpx.post(f"{api}/api/cameras", json=live_camera(rtsp, "late", "cam0").model_dump(), timeout=30)
    assert response.status_code == 201 and response.json()["placement"] == "unplaced"
    wait_for(lambda: any(f["camera"] == "late" for f in cluster.events("camera_unplaced")), 30, "an unplaced event")
    assert _get(api, "/api/cluster")["unplaced"] == ["late"]
    # Removing one frees room: the waiting camera is placed there.
    assert httpx.delete(f"{api}/api/cameras/cam5", timeout=30).status_code == 200
    assert cluster.client.get(owner_key(cluster.prefix, "cam5")) is None
    wait_for(lambda: cluster.cameras()["late"]["placement"] == "placed", 30, "late to be placed")
    assigned = [f for f in cluster.events("camera_assigned") if f["camera"] == "late"]
    assert assigned[-1]["reason"] == "capacity"

    # A node joins: a new camera goes there, running ones stay where they are.
    cluster.session.local.add_node(num_cpus=1, resources={cluster.config.cluster.worker_resource: 1})
    wait_for(lambda: len(cluster.ready_workers()) == 3, 180, "the new node's worker")
    before = {n: (c["worker"], c["epoch"]) for n, c in cluster.cameras().items()}
    response = httpx.post(f"{api}/api/cameras", json=live_camera(rtsp, "joined", "cam1").model_dump(), timeout=30)
    assert response.status_code == 201
    wait_for(lambda: cluster.cameras()["joined"]["placement"] == "placed", 30, "joined to be placed")
    joined_node = cluster.cameras()["joined"]["node"]
    assert joined_node not in survivors
    assert {n: (c["worker"], c["epoch"]) for n, c in cluster.cameras().items() if n != "joined"} == before

    # Exact accounting: cameras go quiet (server stopped), then every worker's counters balance, and each stream is
    # one run of frame indexes per worker that held the camera, the last run exactly what its worker published.
    wait_for(lambda: all(cluster.client.xlen(detections_key(cluster.prefix, n)) >= 1 for n in ("late", "joined")),
             60, "late and joined to publish")
    rtsp.stop()
    try:
        final = cluster.cameras()
        names = sorted(final)

        def balanced() -> dict[str, dict[str, Any]] | None:
            stats = {n: cluster.worker_status(final[n]["worker"])["cameras"][n] for n in names}
            quiet = all(s["state"] in ("offline", "connecting") and s["decoded"] == s["published"] + s["dropped"]
                        for s in stats.values())
            return stats if quiet else None

        stats = wait_for(balanced, 60, "the cameras to go quiet with balanced counters", poll=0.5)
        for name in names:
            runs = frame_runs(cluster.client, detections_key(cluster.prefix, name))
            assert len(runs) == (2 if name in victims else 1), (name, [len(r) for r in runs])
            assert len(runs[-1]) == stats[name]["published"]
            assert all(b > a for run in runs for a, b in zip(run, run[1:]))  # never two writers interleaved
        for name in names:
            assert httpx.delete(f"{api}/api/cameras/{name}", timeout=30).status_code == 200
    finally:
        rtsp.start()


def test_files_are_a_work_queue_and_a_killed_worker_s_file_resumes_after_its_last_frame(
    cluster: Cluster, make_video: Callable[..., Path]
) -> None:
    files = {f"file{i}": make_video(150, seed=60 + i) for i in range(4)}
    wait_for(lambda: len(cluster.ready_workers()) == 3, 120, "3 ready workers")
    for name, path in files.items():
        assert cluster.call("add_camera", CameraConfig(name=name, url=str(path)))
    cluster.call("reconcile_now")

    def victim() -> tuple[str, str] | None:
        for name, c in cluster.cameras().items():
            if name in files and c["placement"] == "placed" and \
                    30 <= cluster.client.xlen(detections_key(cluster.prefix, name)) < 110:
                return name, c["worker"]
        return None

    name, worker = wait_for(victim, 120, "a file half-way through")
    ray.kill(ray.get_actor(worker, namespace=cluster.config.cluster.namespace), no_restart=True)
    assert cluster.session.wait_files_done(timeout=180), cluster.cameras()
    for camera in files:
        frames = [int(f["frame"]) for _, f in cluster.client.xrange(detections_key(cluster.prefix, camera))]
        assert frames == list(range(150)), (camera, len(frames))  # every frame once, in order, no gap
    moved = [f for f in cluster.events("camera_moved") if f["camera"] == name]
    assert moved and moved[-1]["reason"] == "worker_died" and moved[-1]["from_worker"] == worker
    assert {c["state"] for n, c in cluster.cameras().items() if n in files} == {"finished"}
    for camera in files:
        assert cluster.call("remove_camera", camera)
    assert worker_name(moved[-1]["from_node"]) == worker


def test_a_gpu_node_s_worker_claims_its_gpus_and_cpu_workers_see_none(cluster: Cluster) -> None:
    # A worker on a GPU node claims its GPUs: Ray accounts them to it and pins CUDA_VISIBLE_DEVICES, which the API
    # shows. This node declares one GPU to Ray (there is none here: Ray schedules by the declared resource, and the
    # engine stays on onnxruntime).
    local = cluster.session.local
    before = {w["name"] for w in cluster.call("cluster")["workers"]}
    assert all(not w["gpus"] for w in cluster.ready_workers())
    node = local.add_node(num_cpus=1, num_gpus=1, resources={cluster.config.cluster.worker_resource: 1})
    try:
        def gpu_worker() -> dict[str, Any] | None:
            return next((w for w in cluster.ready_workers() if w["name"] not in before), None)

        worker = wait_for(gpu_worker, 180, "the GPU node's worker to load its engine")
        assert worker["gpus"] == ["0"] and worker["node"] == node.node_id
        assert worker["backend"] == "onnxruntime"
        others = [w for w in cluster.ready_workers() if w["name"] != worker["name"]]
        assert others and all(not w["gpus"] for w in others), others  # [] or unset: no GPU on their nodes
    finally:
        local.remove_node(node, allow_graceful=False)
    wait_for(lambda: worker["name"] not in {w["name"] for w in cluster.call("cluster")["workers"]}, 60,
             "the removed node's worker to be dropped")
