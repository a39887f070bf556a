"""Connecting to a Ray cluster (or starting one on this machine) and starting the controller there.

`ADDRESS` is what `ray.init` takes (`auto`, `ray://head:10001`, `HOST:PORT`), or `local:N`: a Ray cluster of N worker
nodes on this machine (`ray.cluster_utils.Cluster`: a head with no CPUs for the controller, and N nodes that each
carry the worker resource), with health checks tuned so that a lost node is noticed in about 1.5 s.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.cluster.address import parse_address
from pipeline.cluster.controller import CONTROLLER_NAME, ClusterController
from pipeline.cluster.state import ClusterState
from pipeline.cluster.worker import redis_client
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

def system_config(config: PipelineConfig) -> dict[str, Any]:
    """Ray's failure detection for a local cluster: health checks every period, lost after `threshold` misses."""
    c = config.cluster
    return {"health_check_period_ms": c.health_check_period_ms,
            "health_check_failure_threshold": c.health_check_failure_threshold,
            "health_check_initial_delay_ms": 0,
            "health_check_timeout_ms": c.health_check_period_ms}


#: Custom Ray resource of the node that hosts the controller (deploy/k8s/raycluster.yaml gives it to the head).
CONTROLLER_RESOURCE = "rpn_controller"


class ClusterSession:
    """A driver's connection to a cluster with the controller running. `local` holds the local Cluster, if any."""

    def __init__(self, config: PipelineConfig, local: Any, controller: Any) -> None:
        self.config = config
        self.local = local
        self.controller = controller

    @classmethod
    def start(cls, address: str, config: PipelineConfig, fresh: bool = True, default_health: bool = False,
              timeout: float = 120.0) -> ClusterSession:
        """Connect (or start `local:N`), start or find the controller, and with `fresh` replace the wanted cameras
        with `config.cameras`. `default_health`: keep Ray's default health checks on a local cluster (benchmarks)."""
        workers = parse_address(address)
        local = None
        init: dict[str, Any] = {"namespace": config.cluster.namespace, "log_to_driver": False,
                                "logging_level": logging.WARNING, "configure_logging": True}
        try:
            if workers is not None:
                from ray.cluster_utils import Cluster

                head: dict[str, Any] = {"num_cpus": 0, "include_dashboard": False,
                                        "resources": {CONTROLLER_RESOURCE: 1}}
                if not default_health:
                    head["_system_config"] = system_config(config)
                local = Cluster(initialize_head=True, head_node_args=head)
                for _ in range(workers):
                    local.add_node(num_cpus=1, resources={config.cluster.worker_resource: 1})
                ray.init(address=local.address, **init)
            else:
                ray.init(address=address, **init)
        except Exception:
            if local is not None:
                local.shutdown()
            raise
        session = cls(config, local, None)
        try:
            if fresh:
                state = ClusterState(redis_client(config), config.redis.prefix)
                state.clear()
                for camera in config.cameras:
                    state.add_desired(camera)
            session.controller = start_controller(config)
            ray.get(session.controller.ready.remote(), timeout=timeout)
        except BaseException:
            session.shutdown(stop_workers=False)
            raise
        return session

    def api_url(self) -> str | None:
        return self.ask("ready", timeout=30)["api"]  # type: ignore[no-any-return]

    def ask(self, method: str, *args: object, timeout: float = 60) -> Any:
        """Call the controller; while Ray restarts it (it died, or its node did), wait and ask again."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return ray.get(getattr(self.controller, method).remote(*args),
                               timeout=max(1.0, deadline - time.monotonic()))
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError) as exc:
                if time.monotonic() >= deadline:
                    raise
                log.info("cluster controller unavailable (%s); asking again", type(exc).__name__)
                time.sleep(0.5)

    def wait_files_done(self, timeout: float | None = None, poll_s: float = 0.5) -> bool:
        """Wait until every wanted camera is a file processed to its end; False on timeout or if a live camera
        is wanted (it never ends)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            cameras = self.ask("cameras", timeout=60)
            if all(c["placement"] == "done" for c in cameras):
                return True
            time.sleep(poll_s)
        return False

    def shutdown(self, stop_workers: bool = True) -> dict[str, Any]:
        """Stop the controller (and, with `stop_workers`, every worker after draining); disconnect; stop a local
        cluster. Never raises: it runs in `finally` blocks and fixtures."""
        final: dict[str, Any] = {}
        try:
            if self.controller is not None and ray.is_initialized():
                try:
                    final = ray.get(self.controller.stop.remote(stop_workers), timeout=60)
                except Exception as exc:  # noqa: BLE001 - the controller may be gone already
                    log.warning("controller did not stop cleanly: %s", exc)
                try:
                    ray.kill(self.controller, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if self.local is not None:
                self.local.shutdown()
        return final


def start_controller(config: PipelineConfig) -> Any:
    """The detached controller actor, created or found by name; Ray restarts it whenever it dies.

    It runs where the custom resource `rpn_controller` is (the head of `local:N` clusters and of deploy/k8s), so
    killing a worker node never takes the controller with it; on a cluster without that resource it prefers the
    head node (soft affinity: Ray may still place it elsewhere)."""
    options: dict[str, Any] = {
        "name": CONTROLLER_NAME, "namespace": config.cluster.namespace, "lifetime": "detached",
        "get_if_exists": True, "num_cpus": 0, "max_restarts": -1, "max_concurrency": 16,
    }
    alive = [n for n in ray.nodes() if n["Alive"]]
    if any(CONTROLLER_RESOURCE in n.get("Resources", {}) for n in alive):
        options["resources"] = {CONTROLLER_RESOURCE: 1}
    else:
        head = next((n["NodeID"] for n in alive if n.get("Resources", {}).get("CPU", 0) == 0
                     and config.cluster.worker_resource not in n.get("Resources", {})), None)
        if head is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
    return ray.remote(ClusterController).options(**options).remote(config)
