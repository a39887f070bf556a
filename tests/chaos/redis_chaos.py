"""Redis faults at random moments of a paced multi-camera run, in a loop (`make chaos`; a short version in make test).

The run: `python run_pipeline.py run --keep-running` on N looping RTSP cameras (GStreamer, tests/rtsp.py) publishing
to a redis-server with AOF `appendfsync always`. Meanwhile, at random moments (the first one within the first second
of publishing): kill -9 and restart on the same port after a random 0..MAX_DOWN s, or SIGSTOP/SIGCONT (a hang), and
optionally once a restart that comes back EMPTY (its AOF deleted). Then SIGTERM, and the check:

- every entry the publisher acknowledged is in Redis exactly once (entries in Redis == delivered_entries), each
  camera's frames strictly increasing (no duplicate, no reordering), ids increasing;
- every camera frame is accounted for: decoded == published + dropped, drops with their reasons;
- an empty restart is detected and logged ("went backwards"), never silently mixed. An entry Redis wrote but
  had not acknowledged when it was killed (in flight) is sent again to the empty server: it is in both, counted
  once, and must lie after the id the publisher logs as acknowledged.

    python -m tests.chaos.redis_chaos --kills 50 --hangs 10 --empty --max-down 10 --cameras 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from pipeline.events.contract import detections_key, events_key
from tests.cli_process import CliProcess
from tests.redis_servers import DEBIAN_REDIS, RedisProcess, debian_redis_available
from tests.rtsp import RtspServer, make_camera_file


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


_RESENT_FIELDS = ("publish_ts", "latency_ms")  # set again at each attempt to send an entry
_BACKWARDS = re.compile(r"Redis stream (\S+) went backwards .* it had acknowledged (\d+-\d+):")


def resent_in_flight(old: list[tuple[str, dict[str, str]]], new: list[tuple[str, dict[str, str]]]) -> int:
    """How many of the last entries of `old` (a server killed, then restarted empty) open `new` again: entries it
    wrote but had not acknowledged when it died, which the publisher therefore sent again."""
    def content(fields: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in fields.items() if k not in _RESENT_FIELDS}
    for n in range(min(len(old), len(new)), 0, -1):
        if all(content(a[1]) == content(b[1]) for a, b in zip(old[-n:], new[:n])):
            return n
    return 0


def check_streams(client: redis.Redis, prefix: str, cameras: list[str]) -> dict[str, object]:
    found: dict[str, object] = {"entries": 0, "duplicates": 0, "reordered": 0}
    for cam in cameras:
        entries = client.xrange(detections_key(prefix, cam))
        frames = [int(f["frame"]) for _, f in entries]
        ids = [tuple(map(int, i.split("-"))) for i, _ in entries]
        found["entries"] += len(entries)  # type: ignore[operator]
        found["duplicates"] += len(frames) - len(set(frames))  # type: ignore[operator]
        found["reordered"] += sum(1 for a, b in zip(frames, frames[1:]) if b <= a)  # type: ignore[operator]
        found["reordered"] += sum(1 for a, b in zip(ids, ids[1:]) if b <= a)  # type: ignore[operator]
        found[f"frames_{cam}"] = len(frames)
    found["events"] = client.xlen(events_key(prefix))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--hangs", type=int, default=10)
    parser.add_argument("--empty", action="store_true", help="one restart comes back empty (AOF deleted)")
    parser.add_argument("--max-down", type=float, default=10.0, help="longest outage after a kill, s")
    parser.add_argument("--max-up", type=float, default=4.0, help="longest time between faults, s")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="redis-chaos-"))
    binary = DEBIAN_REDIS if debian_redis_available() else None
    names = [f"cam{i}" for i in range(args.cameras)]
    files = {f"/{n}": make_camera_file(work / f"{n}.h264", frames=75, width=160, height=120, seed=i)
             for i, n in enumerate(names)}
    server = RedisProcess(work / "redis", binary).start()
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=5)
    rtsp = RtspServer(files).start()
    config = work / "p.yaml"
    cams = ", ".join(f"{{name: {n}, url: '{rtsp.url('/' + n)}', read_timeout_s: 5}}" for n in names)
    config.write_text(f"cameras: [{cams}]\nredis: {{maxlen: 100000000, retry_initial_s: 0.1, retry_max_s: 1.0, socket_timeout_s: 2, "
                      f"flush_timeout_s: 30}}\nruntime: {{drain_timeout_s: 10}}\n")
    summary = work / "summary.json"
    faults: Counter[str] = Counter()
    started = time.monotonic()
    try:
        with CliProcess("run", "--config", str(config), "--keep-running", "--redis-url", server.url, "--prefix", "chaos", "--summary-json", str(summary), "--no-progress") as run:
            deadline = time.monotonic() + 180
            while not client.exists(detections_key("chaos", names[0])):
                assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
                time.sleep(0.05)
            plan = ["kill"] * args.kills + ["hang"] * args.hangs
            rng.shuffle(plan)
            if args.empty:
                plan.insert(rng.randrange(len(plan) // 2, len(plan) + 1), "empty")
            for i, fault in enumerate(plan):
                time.sleep(rng.uniform(0, 1.0) if i == 0 else rng.uniform(0.2, args.max_up))
                if fault == "hang":
                    server.pause()
                    time.sleep(rng.uniform(0.5, min(args.max_down, 6.0)))
                    server.resume()
                else:
                    server.kill()
                    if fault == "empty":  # keep what it had (to count it afterwards), then start it without
                        client.connection_pool.disconnect()
                        shutil.copytree(server.directory / "appendonlydir", work / "lost" / "appendonlydir")
                        shutil.rmtree(server.directory / "appendonlydir")
                    time.sleep(rng.uniform(0, args.max_down))
                    server.start()
                faults[fault] += 1
                assert run.proc.poll() is None, f"the pipeline exited during the faults:\n{run.stderr[-3000:]}"
            time.sleep(3)
            run.signal(signal.SIGTERM)
            stop_at = time.monotonic()
            rc = run.wait(120)
            stop_s = time.monotonic() - stop_at  # the drain (drain_timeout_s 10) and the flush, under load
            stderr = run.stderr
        report = json.loads(summary.read_text())
        pub = report["publisher"]
        found = check_streams(client, "chaos", names)
        in_redis = int(found["entries"]) + int(found["events"])  # type: ignore[call-overload]
        lost = mixed = in_flight = 0
        if args.empty:  # the data the empty restart lost, from the copy of its AOF: older than all that follows
            with RedisProcess(work / "lost", binary) as old:
                before = redis.Redis(port=old.port, decode_responses=True)
                lost_found = check_streams(before, "chaos", names)
                lost = int(lost_found["entries"]) + int(lost_found["events"])  # type: ignore[call-overload]
                found["duplicates"] += lost_found["duplicates"]  # type: ignore[operator]
                found["reordered"] += lost_found["reordered"]  # type: ignore[operator]
                acked = {key: _id(i) for key, i in _BACKWARDS.findall(stderr)}
                for key in [detections_key("chaos", n) for n in names] + [events_key("chaos")]:
                    old, new = before.xrange(key), client.xrange(key)
                    resent = resent_in_flight(old, new)
                    if resent:  # never acknowledged, so not lost: counted where they are now
                        lost -= resent
                        in_flight += resent
                        if key in acked and _id(old[-resent][0]) <= acked[key]:
                            mixed += 1  # the publisher had it acknowledged, yet sent it again
                    kept_old, fresh = old[:len(old) - resent], new[resent:]
                    if kept_old and fresh and _id(fresh[0][0]) <= _id(kept_old[-1][0]):
                        mixed += 1
                before.close()
        accounted = all(s["decoded"] == s["published"] + s["dropped"] for s in report["streams"].values())
        reasons = Counter()
        for s in report["streams"].values():
            reasons.update(s.get("drop_reasons", {}))
        result = {
            "faults": dict(faults), "seconds": round(time.monotonic() - started), "exit": rc,
            "sigterm_to_exit_s": round(stop_s, 1),
            "delivered": pub["delivered_entries"], "in_redis": in_redis, "duplicates": found["duplicates"],
            "reordered": found["reordered"], "frames_accounted": accounted,
            "frame_drops": dict(reasons), "publisher_drops": pub.get("dropped_by_reason", {}),
            "backwards_logged": stderr.count("went backwards"), "lost_in_empty_restart": lost,
            "resent_in_flight": in_flight, "mixed": mixed,
            "decoded": sum(s["decoded"] for s in report["streams"].values()),
        }
        # Exactly once: what Redis holds now plus what the empty restart lost is exactly what it acknowledged.
        result["ok"] = (rc == 0 and result["duplicates"] == 0 and result["reordered"] == 0 and accounted
                        and in_redis + lost == pub["delivered_entries"] and mixed == 0
                        and (not args.empty or result["backwards_logged"] > 0))
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result))
        if not result["ok"]:
            print(stderr[-5000:], file=sys.stderr)
        return 0 if result["ok"] else 1
    finally:
        rtsp.stop()
        server.resume() if server.proc and server.proc.poll() is None else None
        server.kill()
        client.close()
        if not os.environ.get("RPN_CHAOS_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
