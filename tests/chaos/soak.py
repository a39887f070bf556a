"""Soak: 4 RTSP cameras whose servers restart periodically, a camera added and another removed through the HTTP API
every 10 s, a consumer-group subscriber reading all along. Sampled every cycle: resident memory, threads and open
file descriptors of the pipeline process (/proc), and every queue against its bound (/metrics).

Promise: after warm-up, resident memory grows < 50 MB; threads and descriptors stay flat (same count at the same
point of each cycle, within a small slack); no queue beyond its bound.

    python -m tests.chaos.soak --minutes 15        # `make soak`; prints a markdown table, exit 1 if a promise fails
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.cli_process import ROOT, CliProcess
from tests.redis_servers import RedisProcess
from tests.rtsp import RtspServer, make_camera_file

LIVE_QUEUE = 2
RSS_GROWTH_MB = 50
SLACK_THREADS, SLACK_FDS = 2, 6


def proc_sample(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) // 1024, "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def queue_violations(text: str) -> list[str]:
    out = []
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    for (name, labels), value in samples.items():
        if name == "rpn_camera_queue_depth" and value > LIVE_QUEUE:
            out.append(f"{name}{dict(labels)} = {value} > {LIVE_QUEUE}")
    buffered = samples.get(("rpn_publisher_buffered_entries", ()), 0)
    bound = samples.get(("rpn_publisher_buffer_max_entries", ()), 1e18)
    if buffered > bound:
        out.append(f"publisher buffer {buffered} > {bound}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--cycle-s", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    media = work / "media"
    media.mkdir()
    cams = [make_camera_file(work / f"c{i}.h264", frames=75, width=160, height=120, seed=i) for i in range(4)]
    servers = [RtspServer({"/cam": f}).start() for f in cams]
    clip = make_camera_file(media / "extra.h264", frames=75, width=160, height=120, seed=9)
    redis_server = RedisProcess(work / "redis", persist=False).start()
    token = "soak-token"
    config = work / "p.yaml"
    listed = ", ".join(f"{{name: cam{i}, url: '{s.url('/cam')}', read_timeout_s: 3}}" for i, s in enumerate(servers))
    config.write_text(f"cameras: [{listed}]\nserver: {{media_roots: ['{media}']}}\n"
                      f"runtime: {{live_queue_size: {LIVE_QUEUE}, reconnect: {{initial_s: 0.2, max_s: 2}}}}\n")
    env = {"RPN_API_TOKEN": token}
    rows: list[dict[str, object]] = []
    violations: list[str] = []
    sub = subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "subscribe", "--redis-url",
                            redis_server.url, "--group", "soak", "--consumer", "c1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        with CliProcess("run", "--config", str(config), "--keep-running", "--http", "127.0.0.1:0",
                        "--redis-url", redis_server.url, "--no-progress", env=env) as run:
            base = run.http_base()
            http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            end = time.monotonic() + args.minutes * 60
            cycle = 0
            while time.monotonic() < end:
                time.sleep(args.cycle_s)
                cycle += 1
                if cycle % 2 == 0:  # a camera server restarts every other cycle
                    victim = rng.choice(servers)
                    victim.kill()
                    time.sleep(rng.uniform(0, 2))
                    victim.start()
                http.delete(f"/api/cameras/extra{cycle - 1}")
                r = http.post("/api/cameras", json={"name": f"extra{cycle}", "url": str(clip), "realtime": True})
                assert r.status_code == 201, r.text
                sample = proc_sample(run.proc.pid)
                sample["cycle"] = cycle
                sample["entries"] = sum(c["processed"] for c in http.get("/api/cameras").json())
                violations += queue_violations(http.get("/metrics").text)
                rows.append(sample)
                print(f"cycle {cycle}: {sample}", flush=True)
            http.close()
            run.signal(signal.SIGTERM)
            rc = run.wait(120)
    finally:
        sub.send_signal(signal.SIGINT)
        sub.wait(30)
        for s in servers:
            s.stop()
        redis_server.kill()
    warm = rows[max(1, len(rows) // 5):]
    rss_growth = max(r["rss_mb"] for r in warm) - warm[0]["rss_mb"]  # type: ignore[operator]
    threads = [r["threads"] for r in warm]
    fds = [r["fds"] for r in warm]
    # Flat: the counts move with reconnects and the camera added and removed (a sample can catch a closing and an
    # opening connection at once), but do not trend upwards: the median of the last third is no higher than the
    # median of the first third, within a small slack. A leak raises every later sample, so it raises the median;
    # one sample caught mid-reconnect does not.
    third = max(1, len(warm) // 3)
    median = statistics.median
    threads_trend = int(median(threads[-third:]) - median(threads[:third]))  # type: ignore[arg-type]
    fds_trend = int(median(fds[-third:]) - median(fds[:third]))  # type: ignore[arg-type]
    ok = (rc == 0 and rss_growth < RSS_GROWTH_MB and threads_trend <= SLACK_THREADS and fds_trend <= SLACK_FDS
          and not violations)
    print(f"\n| minutes | cycles | RSS after warm-up | RSS growth | threads | open fds | queue-bound violations | "
          f"exit |\n|---|---|---|---|---|---|---|---|\n| {args.minutes:g} | {len(rows)} | {warm[0]['rss_mb']} MB | "
          f"{rss_growth} MB (< {RSS_GROWTH_MB}) | {min(threads)}-{max(threads)} (trend {threads_trend:+d}) | "
          f"{min(fds)}-{max(fds)} (trend {fds_trend:+d}) | "
          f"{len(violations)} | {rc} |")
    for v in violations[:10]:
        print("violation:", v)
    print("promises held" if ok else "PROMISE FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
