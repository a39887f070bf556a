"""Camera faults in a loop: several GStreamer RTSP cameras killed, hung and restarted at random moments, often
several at once, while one `run` publishes them (`make chaos`; a short version in make test).

Each camera has its own server process (tests/rtsp.py), so each can fail alone. Rounds: 1 to 3 cameras at random
get a fault each, at random offsets: kill -9 (the server comes back on the same port after 0..MAX_DOWN s), a hang
(SIGSTOP, then SIGCONT: shorter than the read timeout, or longer, up to MAX_HANG s) or a restart (stopped and
started again at once). A round ends when every faulted camera is online again. Promises, checked per fault and
over the run:

- every camera comes back within its backoff: from the moment its server answers again to its `online` event, at
  most the longest reconnect delay (`max_s` x (1 + jitter)) plus one open (`open_timeout_s`) and the first frame;
- the others never stall: every camera not at fault in a round publishes frames during that round's outage;
- events are exact: one `offline` and one `online` per outage the pipeline could notice (a kill or restart always;
  a hang longer than the read timeout (+1 s) always, one shorter than the read timeout (-0.5 s) never), nothing
  double, states alternating, no event outside an outage;
- at SIGTERM the run exits 0 with every frame accounted (decoded == published + dropped).

    python -m tests.chaos.rtsp_chaos --rounds 18 --cameras 4 --seed 1
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from pipeline.events.contract import detections_key, events_key
from tests.cli_process import CliProcess
from tests.redis_servers import RedisProcess
from tests.rtsp import RtspServer, make_camera_file

PREFIX = "rtspchaos"
READ_TIMEOUT_S, OPEN_TIMEOUT_S = 2.0, 4.0
BACKOFF = {"initial_s": 0.25, "max_s": 2.0, "jitter": 0.2, "healthy_s": 5.0}
FIRST_FRAME_S = 2.0  # a looping file: the next keyframe comes within 1 s (gop 25 at 25 fps); decoding it, a little more


@dataclass
class Fault:
    round: int
    camera: str
    kind: str  # kill | hang | restart
    at: float  # time.time() the fault began
    back: float = 0.0  # time.time() the server answered again (READY, or SIGCONT)
    duration_s: float = 0.0
    online: float | None = None  # the `online` event that ended it
    events: list[tuple[str, float]] = field(default_factory=list)

    @property
    def expected_pairs(self) -> tuple[int, ...]:
        """How many offline/online pairs this outage may cause."""
        if self.kind != "hang":
            return (1,)
        # The silence the pipeline sees is the hang plus the moment the server takes to send again after SIGCONT.
        if self.duration_s < READ_TIMEOUT_S - 0.5:
            return (0,)
        return (1,) if self.duration_s > READ_TIMEOUT_S + 1 else (0, 1)


def state_events(client: redis.Redis) -> list[dict[str, str]]:
    return [f for _, f in client.xrange(events_key(PREFIX)) if f["type"] == "camera_state"]


def online_after(client: redis.Redis, camera: str, since: float) -> float | None:
    for f in state_events(client):
        if f["camera"] == camera and f["state"] == "online" and float(f["ts"]) >= since:
            return float(f["ts"])
    return None


def frames_between(client: redis.Redis, camera: str, start: float, end: float) -> int:
    """Frames of `camera` published (put in the outbox: the stream id's milliseconds) between two times."""
    return len(client.xrange(detections_key(PREFIX, camera), f"{int(start * 1000)}-0", f"{int(end * 1000)}-0"))


def inject(fault: Fault, server: RtspServer, offset: float, rng: random.Random, max_down: float,
           max_hang: float) -> None:
    time.sleep(offset)
    fault.at = time.time()
    if fault.kind == "hang":  # shorter than the read timeout (must go unnoticed) or clearly longer (must not)
        short = rng.random() < 0.4
        server.pause()
        time.sleep(rng.uniform(0.3, READ_TIMEOUT_S - 0.5) if short else rng.uniform(READ_TIMEOUT_S + 1.2, max_hang))
        server.resume()
    elif fault.kind == "kill":
        server.kill()
        time.sleep(rng.uniform(0, max_down))
        server.start()
    else:
        server.stop()
        server.start()
    fault.back = time.time()
    fault.duration_s = fault.back - fault.at


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=18)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--max-at-once", type=int, default=3)
    parser.add_argument("--max-down", type=float, default=4.0, help="longest outage after a kill, s")
    parser.add_argument("--max-hang", type=float, default=7.0, help="longest SIGSTOP, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rtsp-chaos-"))
    started = time.monotonic()
    names = [f"cam{i}" for i in range(args.cameras)]
    servers = {n: RtspServer({"/cam": make_camera_file(work / f"{n}.h264", frames=75, width=160, height=120,
                                                          seed=i)}).start() for i, n in enumerate(names)}
    redis_server = RedisProcess(work / "redis", persist=False).start()
    client = redis.Redis(port=redis_server.port, decode_responses=True, socket_timeout=10)
    config = work / "p.yaml"
    cams = ", ".join(f"{{name: {n}, url: '{servers[n].url('/cam')}', read_timeout_s: {READ_TIMEOUT_S}, "
                     f"open_timeout_s: {OPEN_TIMEOUT_S}}}" for n in names)
    config.write_text(f"cameras: [{cams}]\nruntime: {{reconnect: {json.dumps(BACKOFF)}, drain_timeout_s: 10}}\n"
                      f"redis: {{prefix: {PREFIX}, maxlen: 1000000}}\n")
    bound_s = BACKOFF["max_s"] * (1 + BACKOFF["jitter"]) + OPEN_TIMEOUT_S + FIRST_FRAME_S
    summary = work / "summary.json"
    faults: list[Fault] = []
    stalls: list[str] = []
    unrecovered: list[str] = []
    try:
        with CliProcess("--log-level", "warning", "run", "--config", str(config), "--keep-running", "--redis-url",
                        redis_server.url, "--summary-json", str(summary), "--no-progress") as run:
            deadline = time.monotonic() + 240
            while not all(online_after(client, n, 0) for n in names):
                assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr[-3000:]
                time.sleep(0.1)
            time.sleep(1)
            for r in range(args.rounds):
                victims = rng.sample(names, rng.randint(1, min(args.max_at_once, args.cameras)))
                round_faults = [Fault(r, n, rng.choice(["kill", "kill", "hang", "hang", "restart"]), 0.0)
                                for n in victims]
                threads = [threading.Thread(target=inject, args=(f, servers[f.camera], rng.uniform(0, 1.5),
                                                                 random.Random(rng.random()), args.max_down,
                                                                 args.max_hang)) for f in round_faults]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                # The round ends when every faulted camera that went offline is online again (a short hang may
                # not have been noticed: then its frames simply flow again).
                for f in round_faults:
                    wait_until = time.monotonic() + bound_s + 30
                    while time.monotonic() < wait_until:
                        f.online = online_after(client, f.camera, f.at)
                        noticed = any(e["camera"] == f.camera and e["state"] == "offline" and float(e["ts"]) >= f.at
                                      for e in state_events(client))
                        if f.online is not None or (not noticed and frames_between(client, f.camera, f.back,
                                                                                     time.time()) > 0
                                                    and time.time() > f.back + READ_TIMEOUT_S + 1):
                            break
                        time.sleep(0.1)
                    else:
                        unrecovered.append(f"{f.camera} ({f.kind}, round {r}) not back within {bound_s + 30:.0f} s")
                end = max([f.online or f.back for f in round_faults])
                start = min(f.at for f in round_faults)
                for other in set(names) - set(victims):
                    if frames_between(client, other, start, end) == 0:
                        stalls.append(f"{other} published nothing during round {r} ({end - start:.1f} s)")
                faults += round_faults
                print(f"round {r}: " + "; ".join(
                    f"{f.camera} {f.kind} {f.duration_s:.1f} s, online "
                    f"{'-' if f.online is None else f'{f.online - f.back:+.2f} s'}" for f in round_faults), flush=True)
                assert run.proc.poll() is None, f"the pipeline exited:\n{run.stderr[-3000:]}"
                time.sleep(rng.uniform(0.5, 2.5))
            time.sleep(2)
            run.signal(signal.SIGTERM)
            rc = run.wait(120)
            stderr = run.stderr
        report = json.loads(summary.read_text())
        events = state_events(client)
        # Assign every camera_state event after the first `online` of its camera to the fault it belongs to.
        strays: list[str] = []
        for n in names:
            cam_events = [(e["state"], float(e["ts"])) for e in events if e["camera"] == n]
            first_online = next(i for i, (s, _) in enumerate(cam_events) if s == "online")
            mine = sorted((f for f in faults if f.camera == n), key=lambda f: f.at)
            for state, ts in cam_events[first_online + 1:]:
                owner = next((f for f in reversed(mine) if f.at <= ts), None)
                if owner is None or state == "stopped":
                    if state != "stopped":
                        strays.append(f"{n} {state} at {ts:.2f} before any fault")
                    continue
                owner.events.append((state, ts))
        inexact = []
        for f in faults:
            states = [s for s, _ in f.events]
            pairs = states.count("offline")
            if states != ["offline", "online"] * pairs or pairs not in f.expected_pairs:
                inexact.append(f"{f.camera} {f.kind} {f.duration_s:.1f} s (round {f.round}): {states}")
        to_online = [f.online - f.back for f in faults if f.online is not None and f.events]
        noticed = [next(ts for s, ts in f.events if s == "offline") - f.at
                   for f in faults if f.kind == "hang" and f.events]
        beyond = [f"{f.camera} {f.kind}: {f.online - f.back:.2f} s" for f in faults
                  if f.online is not None and f.events and f.online - f.back > bound_s]
        accounted = all(s["decoded"] == s["published"] + s["dropped"] for s in report["streams"].values())
        short_hangs = sum(1 for f in faults if f.kind == "hang" and f.expected_pairs == (0,))
        kinds = {k: sum(f.kind == k for f in faults) for k in ("kill", "hang", "restart")}
        at_once = {k: sum(1 for r in range(args.rounds) if sum(f.round == r for f in faults) == k)
                   for k in range(1, args.max_at_once + 1)}
        result = {
            "faults": len(faults), "kinds": kinds, "rounds_by_cameras_at_fault": at_once, "cameras": args.cameras,
            "pairs": sum(s == "offline" for f in faults for s, _ in f.events),
            "hangs_unnoticed": sum(1 for f in faults if f.kind == "hang" and not f.events),
            "short_hangs": short_hangs,
            "time_to_online_s": {"median": round(statistics.median(to_online), 2) if to_online else None,
                                 "max": round(max(to_online), 2) if to_online else None},
            "hang_noticed_after_s": [round(min(noticed), 2), round(max(noticed), 2)] if noticed else None,
            "bound_s": round(bound_s, 2), "beyond_bound": beyond, "unrecovered": unrecovered, "stalls": stalls,
            "inexact_events": inexact, "stray_events": strays, "exit": rc, "frames_accounted": accounted,
            "published": report.get("published"), "seconds": round(time.monotonic() - started),
        }
        ok = (not beyond and not unrecovered and not stalls and not inexact and not strays and rc == 0
              and accounted)
        result["ok"] = ok
        print(json.dumps(result, indent=1))
        tto: dict[str, float | None] = result["time_to_online_s"]  # type: ignore[assignment]
        print("\n| faults | kill / hang / restart | rounds with 1 / 2 / 3 at fault | offline/online pairs | "
              "short hangs unnoticed | time to online, median / max (bound) | stalls | inexact events | exit |\n"
              "|---|---|---|---|---|---|---|---|---|")
        print(f"| {len(faults)} over {args.cameras} cameras | {kinds['kill']} / {kinds['hang']} / {kinds['restart']} | "
              f"{' / '.join(str(v) for v in at_once.values())} | {result['pairs']} | "
              f"{result['hangs_unnoticed']} of {short_hangs} | {tto['median']} / {tto['max']} s ({bound_s:.1f} s) | "
              f"{len(stalls)} | {len(inexact) + len(strays)} | {rc} |")
        print("promises held" if ok else "PROMISE FAILED", flush=True)
        if not ok:
            print(stderr[-5000:], file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(result))
        return 0 if ok else 1
    finally:
        for s in servers.values():
            if s.running:
                s.resume()
            s.stop()
        client.close()
        redis_server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
