"""The pipeline itself killed: SIGKILL of `run` at random moments while it processes a long recorded file, then the
same command with `--resume`, again and again (`make chaos`; a short version in make test); then SIGTERM under load.

Each run is `python run_pipeline.py run --source clip=FILE --resume` (paced with `--paced`: `--realtime`, a file
standing in for a camera). Kill moments, at random: within the first second of the process (before it has
published anything), within the first second after this run's first new entry, or up to a few seconds later. After
every kill the stream is checked (the promise holds at every step, not only at the end), and after the last kill
one more run finishes the file:

- the stream holds frames 0..L (L the last one published so far): no duplicate, none missing, none reordered,
  stream ids increasing; at the end, frames 0..N-1 exactly once each, in order, and the last run exits 0.

SIGTERM under load: the same file plus more files in one run, SIGTERM once it publishes: the process drains and
exits within `drain_timeout_s` plus the flush (`flush_timeout_s`) and its own start-up of the summary, exit 0, every
frame of the stopped run accounted (decoded == published + dropped); `--resume` then completes every file exactly.

    python -m tests.chaos.resume_chaos --kills 10 --frames 1500 --seed 1
    python -m tests.chaos.resume_chaos --kills 10 --frames 600 --paced --seed 2
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import redis

from lab.synth import SceneSpec, write_video
from pipeline.events.contract import detections_key
from tests.cli_process import CliProcess
from tests.redis_servers import RedisProcess

PREFIX = "resume"


def stream_check(client: redis.Redis, camera: str) -> dict[str, int]:
    """Frames in the camera's stream: how many, the last, and what breaks '0..last, each once, in order'."""
    entries = client.xrange(detections_key(PREFIX, camera))
    frames = [int(f["frame"]) for _, f in entries]
    ids = [tuple(map(int, i.split("-"))) for i, _ in entries]
    return {
        "entries": len(frames),
        "last": frames[-1] if frames else -1,
        "duplicates": len(frames) - len(set(frames)),
        "reordered": sum(1 for a, b in zip(frames, frames[1:]) if b < a)
        + sum(1 for a, b in zip(ids, ids[1:]) if b <= a),
        "missing": (max(frames) + 1 - len(set(frames))) if frames else 0,
    }


def _run_args(video: Path, url: str, paced: bool, camera: str = "clip") -> list[str]:
    args = ["--log-level", "warning", "run", "--redis-url", url, "--prefix", PREFIX, "--resume", "--no-progress"]
    if not paced:
        return args + ["--source", f"{camera}={video}"]
    # Paced: released at its frame rate, like a camera; a live queue long enough that the engine (2 busy cores)
    # never drops a frame, so the promise stays "every frame": what is checked here is resuming, not drop-oldest.
    config = video.with_suffix(".paced.yaml")
    config.write_text(f"cameras: [{{name: {camera}, url: '{video}', realtime: true}}]\n"
                      "runtime: {live_queue_size: 10000}\n")
    return args + ["--config", str(config)]


def _wait_growth(client: redis.Redis, key: str, above: int, run: CliProcess, timeout: float = 240) -> bool:
    """Wait until the stream holds more than `above` entries; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while client.xlen(key) <= above:
        if run.proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"no new entry in {timeout} s:\n{run.stderr[-3000:]}")
        time.sleep(0.02)
    return True


def kill_loop(client: redis.Redis, url: str, video: Path, frames: int, kills: int, paced: bool,
              rng: random.Random, work: Path) -> dict[str, object]:
    key = detections_key(PREFIX, "clip")
    rows: list[dict[str, object]] = []
    moments = {"process start": 0, "first entry": 0, "later": 0}
    # The first kill within the first second of the process; the others spread evenly over the three moments.
    plan = (list(moments) * kills)[1:kills]
    rng.shuffle(plan)
    plan.insert(0, "process start")
    broken = 0
    for i, moment in enumerate(plan[:kills]):
        before = client.xlen(key)
        with CliProcess(*_run_args(video, url, paced)) as run:
            if moment == "process start":  # before it has loaded its model, or while it connects
                time.sleep(rng.uniform(0, 1.0))
            elif not _wait_growth(client, key, before, run):
                raise AssertionError(f"run {i} ended before it was killed: make the file longer\n{run.stderr[-2000:]}")
            elif moment == "first entry":
                time.sleep(rng.uniform(0, 1.0))
            else:
                time.sleep(rng.uniform(1.0, 4.0))
            if run.proc.poll() is not None:
                raise AssertionError(f"run {i} ended before it was killed: make the file longer\n{run.stderr[-2000:]}")
            run.proc.kill()
            run.wait(30)
            resumed = next((ln.strip() for ln in run.lines if "Resuming clip" in ln),
                           "killed before it printed a resume point" if before else "from the start")
        moments[moment] += 1
        found = stream_check(client, "clip")
        ok = found["duplicates"] == 0 and found["reordered"] == 0 and found["missing"] == 0
        broken += not ok
        row = {"kill": i + 1, "moment": moment, "resumed": resumed, "new_entries": found["entries"] - before, **found}
        rows.append(row)
        print(f"kill {i + 1}: {json.dumps(row)}{'' if ok else '  PROMISE BROKEN'}", flush=True)
    with CliProcess(*_run_args(video, url, paced)) as run:  # the last run finishes the file
        rc = run.wait(1800)
        final_stderr = run.stderr
    found = stream_check(client, "clip")
    frames_list = [int(f["frame"]) for _, f in client.xrange(key)]
    complete = frames_list == list(range(frames))
    print(f"final run: exit {rc}, {json.dumps(found)}, frames 0..{frames - 1} exactly once in order: {complete}",
          flush=True)
    if rc != 0 or not complete:
        print(final_stderr[-4000:], file=sys.stderr)
    return {"kills": kills, "moments": moments, "frames": frames, "in_stream": len(frames_list),
            "duplicates": found["duplicates"], "reordered": found["reordered"],
            "lost": frames - len(set(frames_list)), "broken_after_kill": broken, "final_exit": rc,
            "complete": complete, "paced": paced}


def sigterm_under_load(client: redis.Redis, url: str, videos: dict[str, Path], frames: int, drain_s: float,
                       work: Path, rng: random.Random) -> dict[str, object]:
    """SIGTERM while several files are processed at full speed: drains in time; --resume then completes them."""
    config = work / "load.yaml"
    cams = ", ".join(f"{{name: {n}, url: '{v}'}}" for n, v in videos.items())
    config.write_text(f"cameras: [{cams}]\nruntime: {{drain_timeout_s: {drain_s}}}\nredis: {{prefix: {PREFIX}}}\n")
    summary = work / "load.json"
    args = ["--log-level", "warning", "run", "--config", str(config), "--redis-url", url, "--resume", "--no-progress"]
    with CliProcess(*args, "--summary-json", str(summary), env={"PYTHONUNBUFFERED": "1"}) as run:
        first = next(iter(videos))
        _wait_growth(client, detections_key(PREFIX, first), client.xlen(detections_key(PREFIX, first)), run)
        time.sleep(rng.uniform(0.5, 2.0))
        run.signal(signal.SIGTERM)
        stopped = time.monotonic()
        # The summary is printed once the pipeline has ended: sources stopped, in-flight frames drained (at most
        # drain_timeout_s) and the publisher flushed (at most flush_timeout_s); then the process closes the engine.
        drained_s = None
        while run.proc.poll() is None and drained_s is None:
            if any("Run finished" in line for line in run.out):
                drained_s = time.monotonic() - stopped
            time.sleep(0.01)
        rc = run.wait(300)
        stop_s = time.monotonic() - stopped
        drained_s = drained_s if drained_s is not None else stop_s
        stderr = run.stderr
    report = json.loads(summary.read_text())
    accounted = all(s["decoded"] == s["published"] + s["dropped"] for s in report["streams"].values())
    checks = {n: stream_check(client, n) for n in videos}
    exact_prefix = all(c["duplicates"] == 0 and c["reordered"] == 0 and c["missing"] == 0 for c in checks.values())
    with CliProcess(*args) as run:
        rc_resume = run.wait(1800)
    complete = all([int(f["frame"]) for _, f in client.xrange(detections_key(PREFIX, n))] == list(range(frames))
                   for n in videos)
    result = {"cameras": len(videos), "drain_timeout_s": drain_s, "sigterm_to_summary_s": round(drained_s, 2),
              "sigterm_to_exit_s": round(stop_s, 2),
              "exit": rc, "frames_accounted": accounted, "published_before_stop": report.get("published"),
              "stream_prefix_exact": exact_prefix, "resume_exit": rc_resume, "resume_complete": complete}
    print(f"SIGTERM under load: {json.dumps(result)}", flush=True)
    if rc != 0:
        print(stderr[-3000:], file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--frames", type=int, default=1500, help="length of the recorded file")
    parser.add_argument("--paced", action="store_true", help="--realtime: the file paced to its frame rate")
    parser.add_argument("--load-cameras", type=int, default=3, help="files in the SIGTERM run (0: skip it)")
    parser.add_argument("--drain-s", type=float, default=5.0, help="runtime.drain_timeout_s of the SIGTERM run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="resume-chaos-"))
    started = time.monotonic()
    spec = SceneSpec(width=160, height=120, fps=25, frames=args.frames)
    video = work / "clip.mp4"
    write_video(video, spec, seed=args.seed)
    server = RedisProcess(work / "redis", persist=False).start()
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)
    try:
        result: dict[str, object] = {"kill_loop": kill_loop(client, server.url, video, args.frames, args.kills,
                                                            args.paced, rng, work)}
        ok = (result["kill_loop"]["complete"] and result["kill_loop"]["final_exit"] == 0  # type: ignore[index]
              and result["kill_loop"]["broken_after_kill"] == 0)  # type: ignore[index]
        if args.load_cameras:
            load_frames = min(args.frames, 400)
            videos = {}
            for i in range(args.load_cameras):
                path = work / f"load{i}.mp4"
                write_video(path, SceneSpec(width=160, height=120, fps=25, frames=load_frames), seed=100 + i)
                videos[f"load{i}"] = path
            term = sigterm_under_load(client, server.url, videos, load_frames, args.drain_s, work, rng)
            result["sigterm"] = term
            # Drained within drain_timeout_s, then flushed within flush_timeout_s (default 5 s): the summary comes
            # after both (a generous slack for a loaded machine: the loop is about what happens, not speed).
            ok = ok and (term["exit"] == 0 and term["frames_accounted"] and term["stream_prefix_exact"]
                         and term["resume_exit"] == 0 and term["resume_complete"]
                         and term["sigterm_to_summary_s"] <= args.drain_s + 5 + 10)  # type: ignore[operator]
        result["seconds"] = round(time.monotonic() - started)
        result["ok"] = ok
        k = result["kill_loop"]
        print(f"\n| kills | moments | frames | lost | duplicated | reordered | broken after a kill | final exit |"
              f"\n|---|---|---|---|---|---|---|---|"
              f"\n| {k['kills']}{' (paced)' if args.paced else ''} | "  # type: ignore[index]
              f"{', '.join(f'{n} {c}' for n, c in k['moments'].items())} | {k['frames']} | "  # type: ignore[index]
              f"{k['lost']} | {k['duplicates']} | {k['reordered']} | {k['broken_after_kill']} | "  # type: ignore[index]
              f"{k['final_exit']} |")  # type: ignore[index]
        print("promises held" if ok else "PROMISE FAILED", flush=True)
        if args.json:
            args.json.write_text(json.dumps(result))
        return 0 if ok else 1
    finally:
        client.close()
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
