"""The pipeline's configuration, in one place: a YAML file validated by pydantic, plus CLI overrides.

```yaml
cameras:
  - name: lobby
    url: rtsp://user:pass@10.0.0.5/stream1
    transport: tcp
engine: {backend: auto, arch: fasterrcnn_lite, weights: null, score_threshold: 0.5}
# COCO detector in one step, keeping only people and cars (docs/model.md):
# engine: {arch: fasterrcnn_mobilenet_v3_large_fpn, weights: DEFAULT, classes: [person, car],
#          filters: {person: {min_score: 0.6, min_area: 400}}}
batching: {max_batch: 4, max_delay_ms: 20}
redis: {url: null, prefix: rpn, maxlen: 10000, buffer_max_entries: 100000}
server: {host: 127.0.0.1, port: 8080}   # HTTP API, metrics, live view (docs/api.md); token: env RPN_API_TOKEN
cluster: {max_cameras_per_worker: 8}    # only with `run --cluster` (docs/cluster.md)
```
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from engines import ARCHS, BACKENDS, DEFAULT_ARCH

API_TOKEN_ENV = "RPN_API_TOKEN"  # overrides server.token from a config file
API_TOKEN_FILE_ENV = "RPN_API_TOKEN_FILE"  # a file holding the token (a mounted Kubernetes secret), if RPN_API_TOKEN is unset
CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, the key and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- zone and line analytics (pipeline/analytics, docs/analytics.md) ----------------------------------------------
REGION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ANCHORS = ("bottom_center", "center", "top_center", "bottom_left", "bottom_right")


class _RegionConfig(_Strict):
    """What zones and lines share: which objects count, and which point of their box."""

    name: str = Field(description="Unique among the camera's zones and lines; used in events and metrics.")
    points: list[tuple[float, float]] = Field(description="[x, y] in source pixels, or 0-1 with normalized: true.")
    normalized: bool = Field(False, description="Points are fractions of the frame's width and height.")
    labels: list[str] | None = Field(None, description="Only objects of these labels (default: all).")
    min_size: float = Field(0.0, ge=0, description="Smallest object counted: sqrt(box width x height), pixels.")
    min_score: float = Field(0.0, ge=0, le=1, description="Lowest detection score counted.")
    # Lines keep 1: a crossing already needs two sightings, one on each side; waiting for a second frame only loses
    # crossings. Zones wait for a second frame (ZoneConfig).
    min_frames: int = Field(1, ge=1, le=1000, description="Frames an object's track must have been seen in before it "
                            "counts (a line crossing already needs two sightings).")
    anchor: Literal[ANCHORS] = Field("bottom_center", description="The point of the box that counts.")  # type: ignore[valid-type]
    hysteresis: float = Field(0.25, ge=0, le=2, description="Dead band either side of the line or border, as a "
                              "fraction of the object's box height: jitter on it gives no event.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not REGION_NAME.match(value):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _points(self) -> _RegionConfig:
        if self.normalized:
            for i, (x, y) in enumerate(self.points):
                if not (0 <= x <= 1 and 0 <= y <= 1):
                    raise ValueError(f"point {i} ({x:g}, {y:g}) is outside 0-1 (normalized: true)")
        elif any(x < 0 or y < 0 for x, y in self.points):
            raise ValueError("points in pixels must not be negative")
        return self

    def pixel_points(self, width: int, height: int) -> list[tuple[float, float]]:
        if not self.normalized:
            return list(self.points)
        return [(x * width, y * height) for x, y in self.points]

    def outside_frame(self, width: int, height: int) -> str | None:
        """Why the region does not fit a width x height frame, or None."""
        for i, (x, y) in enumerate(self.pixel_points(width, height)):
            if x > width or y > height:
                return f"{self.name}: point {i} ({x:g}, {y:g}) is outside the {width}x{height} frame"
        return None


class ZoneConfig(_RegionConfig):
    """A polygon: zone_enter / zone_exit / zone_dwell / zone_occupancy events and a live occupancy count."""

    min_frames: int = Field(2, ge=1, le=1000, description="Frames an object's track must have been seen in before it "
                            "counts: a box seen once (a false or duplicate detection) enters no zone.")
    dwell_s: float | None = Field(None, gt=0, description="zone_dwell once an object has been inside this long.")
    max_objects: int | None = Field(None, ge=0, description="Overcrowding: more objects inside than this.")

    @model_validator(mode="after")
    def _polygon(self) -> ZoneConfig:
        import shapely  # imported lazily: loading a config without zones does not need it
        from shapely.validation import explain_validity

        if len(self.points) < 3:
            raise ValueError(f"zone {self.name!r}: a polygon needs at least 3 points, got {len(self.points)}")
        polygon = shapely.Polygon(self.points)
        if not polygon.is_valid:  # e.g. "Self-intersection[120 80]": where the outline crosses itself
            raise ValueError(f"zone {self.name!r}: invalid polygon: {explain_validity(polygon)}")
        if polygon.area <= 0:
            raise ValueError(f"zone {self.name!r}: the polygon has no area")
        return self


class LineConfig(_RegionConfig):
    """A segment from points[0] to points[1]: line_cross events and in/out totals. Crossing from the left of
    the direction points[0] -> points[1] (as seen on the image) to its right is `in`, the other way `out`."""

    in_name: str = Field("in", min_length=1, description="What users call the in direction (e.g. northbound).")
    out_name: str = Field("out", min_length=1, description="What users call the out direction.")

    @model_validator(mode="after")
    def _segment(self) -> LineConfig:
        if len(self.points) != 2:
            raise ValueError(f"line {self.name!r}: needs exactly 2 points, got {len(self.points)}")
        if self.points[0] == self.points[1]:
            raise ValueError(f"line {self.name!r}: its two points are the same")
        return self


class AnalyticsConfig(_Strict):
    """A camera's zones and lines (the body of PUT /api/cameras/{name}/analytics)."""

    zones: list[ZoneConfig] = Field(default_factory=list)
    lines: list[LineConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AnalyticsConfig:
        return _unique_regions(self)


def _unique_regions(model: Any) -> Any:
    seen: set[str] = set()
    for region in [*model.zones, *model.lines]:
        if region.name in seen:
            raise ValueError(f"zone/line name {region.name!r} is used twice")
        seen.add(region.name)
    return model


NOT_A_CLASS = ("__background__", "N/A")  # placeholders in a model's label list (torchvision's COCO has "N/A" gaps)


def unknown_label(label: str, label_names: Sequence[str]) -> str | None:
    """None when the model has `label`; else why not, with the closest names and every label it has."""
    known = [n for n in label_names if n and n not in NOT_A_CLASS]
    if label in known:
        return None
    close = difflib.get_close_matches(label, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"the model has no label {label!r}; {hint}its labels: {', '.join(known)}"


def check_labels(analytics: AnalyticsConfig | CameraConfig, label_names: Sequence[str]) -> list[str]:
    """Label filters naming a class the detector does not have: one message each."""
    return [f"{kind} {r.name!r}: {reason}"
            for kind, regions in (("zone", analytics.zones), ("line", analytics.lines))
            for r in regions for label in r.labels or ()
            if (reason := unknown_label(label, label_names)) is not None]


class CameraConfig(_Strict):
    name: str = Field(description="Unique camera name; used in Redis keys, logs and events.")
    url: str = Field(min_length=1, description="File path, file:, rtsp://, http(s):// URL (HLS .m3u8, MJPEG).")
    format: str | None = Field(
        None, pattern=r"^[a-z0-9_,]+$",
        description="FFmpeg input format, e.g. mpjpeg (MJPEG over HTTP), hls, v4l2; default: guessed from the URL "
                    "(.m3u8: hls; mjpg/mjpeg in the path or ?action=stream: mpjpeg), else probed.",
    )
    options: dict[str, str] = Field(default_factory=dict, description="FFmpeg demuxer options.")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0, description="A camera silent this long is declared offline.")
    realtime: bool = Field(False, description="Pace a file to its native frame rate, as if it were a camera.")
    max_fps: float | None = Field(None, gt=0, description="Detect at most this many frames per second.")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Zones (docs/analytics.md).")
    lines: list[LineConfig] = Field(default_factory=list, description="Counting lines (docs/analytics.md).")
    skip_frames: Literal["auto", "none", "nonref", "nonkey"] = Field(
        "auto", description="Frames the decoder skips: auto = non-reference frames when max_fps <= half the frame "
        "rate; nonkey = keyframes only (one detection per GOP). docs/performance.md gives the cost of each.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CAMERA_NAME.match(value):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        if isinstance(value, dict):  # YAML gives numbers and booleans; FFmpeg wants strings
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value

    _unique_regions = model_validator(mode="after")(_unique_regions)


class ClassFilter(_Strict):
    """Extra conditions a detection of one label must meet to be kept (on top of engine.score_threshold)."""

    min_score: float | None = Field(None, ge=0.0, le=1.0, description="Drop this label's boxes scoring below.")
    min_area: float | None = Field(None, ge=0.0, description="Drop this label's boxes smaller (width x height, "
                                   "in source pixels).")


class EngineConfig(_Strict):
    backend: Literal[BACKENDS] = "auto"  # type: ignore[valid-type]
    arch: Literal[ARCHS] = DEFAULT_ARCH  # type: ignore[valid-type]
    weights: Path | None = Field(None, description="A weights file, or torchvision's COCO weights of the arch by "
                                 "name (DEFAULT, COCO_V1), downloaded once into the torch hub cache.")
    classes: list[str] | None = Field(None, min_length=1, description="Keep only detections of these labels "
                                      "(the model's label names); null: all.")
    filters: dict[str, ClassFilter] = Field(default_factory=dict, description="Per-label min_score / min_area, "
                                            "e.g. {person: {min_score: 0.6, min_area: 400}}.")
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    threads: int | None = Field(None, ge=1, description="CPU threads for the engine (default: all cores).")
    device: str = "cpu"
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="int8: the calibrated INT8 dense graph, used only where its accuracy check accepted it "
        "(python -m lab.quantize; docs/performance.md).")
    frame_size: tuple[int, int] = Field(
        (640, 360), description="(width, height) the accelerated engines are built for; other sizes are letterboxed."
    )

    @field_validator("frame_size")
    @classmethod
    def _frame_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 32 or max(value) > 8192:
            raise ValueError("width and height must be between 32 and 8192")
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"a label is listed twice: {value}")
        return value

    @model_validator(mode="after")
    def _filters_of_kept_classes(self) -> EngineConfig:
        # Label names are checked against the model when it is loaded (pipeline/inference/detector.py).
        if self.classes is not None:
            dropped = [name for name in self.filters if name not in self.classes]
            if dropped:
                raise ValueError(f"filters: {', '.join(dropped)} not in classes {self.classes}: "
                                 "its detections are dropped anyway")
        return self


class BatchingConfig(_Strict):
    max_batch: int = Field(4, ge=1, le=256)
    max_delay_ms: float = Field(20.0, ge=0.0, le=10_000.0)


class TrackerConfig(_Strict):
    coast_s: float = Field(
        0.2, ge=0.0, le=5.0,
        description="Seconds an object on a published track that the detector misses is still published, at the box "
                    "the tracker predicts, marked predicted (docs/events.md); 0: only the detector's boxes.",
    )


class RedisConfig(_Strict):
    url: str | None = Field(None, description="redis://, rediss:// or unix:// URL; none: embedded server.")
    prefix: str = Field("rpn", pattern=r"^[A-Za-z0-9_.:-]+$")
    maxlen: int = Field(10_000, ge=1, description="Approximate length cap of each stream (detections and events).")
    embedded_db: Path | None = Field(None, description="RDB file of the embedded server (default: user state dir).")
    username: str | None = Field(None, description="ACL user (or in the URL: redis://user:password@host).")
    password: SecretStr | None = Field(None, description="Password; best as ${REDIS_PASSWORD} in the config file.")
    ca_file: Path | None = Field(None, description="CA certificate(s) to verify a rediss:// server with.")
    cert_file: Path | None = Field(None, description="Client certificate, when the server wants one (mutual TLS).")
    key_file: Path | None = Field(None, description="Private key of cert_file.")
    pubsub: bool = Field(False, description="Also PUBLISH each entry, as JSON, on a channel named like its stream.")
    buffer_max_entries: int = Field(
        100_000, ge=10, description="Entries the publisher holds while Redis is unreachable; beyond, oldest dropped."
    )
    buffer_max_bytes: int = Field(64 * 2**20, ge=4096, description="Same bound in bytes of keys, fields and values.")
    retry_initial_s: float = Field(0.2, gt=0, description="First retry delay after Redis fails; doubles (+-20 %).")
    retry_max_s: float = Field(5.0, gt=0, description="Longest retry delay.")
    socket_timeout_s: float = Field(5.0, gt=0, description="A Redis reply slower than this counts as a failure.")
    flush_timeout_s: float = Field(5.0, ge=0, description="At shutdown, how long buffered entries may take to go out.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _tls(self) -> RedisConfig:
        tls = [n for n in ("ca_file", "cert_file", "key_file") if getattr(self, n) is not None]
        if tls and not (self.url or "").startswith("rediss://"):
            raise ValueError(f"{', '.join(tls)}: only for a rediss:// url (TLS)")
        for name in tls:
            if not getattr(self, name).is_file():
                raise ValueError(f"{name}: no such file: {getattr(self, name)}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for redis-py beyond the URL: credentials and TLS files."""
        options: dict[str, Any] = {}
        if self.username is not None:
            options["username"] = self.username
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        if self.ca_file is not None:
            options["ssl_ca_certs"] = str(self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            options.update(ssl_certfile=str(self.cert_file), ssl_keyfile=str(self.key_file))
        return options


class ReconnectConfig(_Strict):
    """Backoff of live cameras: initial_s doubling up to max_s, +-jitter, reset after healthy_s online."""

    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)
    jitter: float = Field(0.2, ge=0, lt=1)
    healthy_s: float = Field(10.0, ge=0)


class RuntimeConfig(_Strict):
    queue_size: int = Field(8, ge=1, le=1024, description="Capacity of each channel between stages.")
    live_queue_size: int = Field(2, ge=1, le=100_000, description="Frames a live camera may have waiting (oldest dropped).")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    drain_timeout_s: float = Field(
        3.0, ge=0.0, description="After a stop request, how long in-flight frames may drain before being dropped."
    )


class ServerConfig(_Strict):
    """The HTTP API, Prometheus metrics and live web view (docs/api.md). Off unless `port` is set."""

    host: str = Field("127.0.0.1", min_length=1, description="Address to bind; other than loopback needs a token.")
    port: int | None = Field(None, ge=0, le=65535, description="null: no HTTP server; 0: any free port (logged).")
    token: SecretStr | None = Field(
        None, description="Bearer token required on every endpoint but /healthz and /; env RPN_API_TOKEN overrides."
    )

    media_roots: list[Path] = Field(
        default_factory=list, description="Folders whose files the HTTP API may add as cameras (symlinks resolved); "
        "none: network URLs only.")

    @property
    def enabled(self) -> bool:
        return self.port is not None

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect (127.0.0.0/8, ::1 or localhost)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to any interface

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServerConfig:
        # Anyone who can reach the port could add cameras (URLs the process then opens) or read every camera.
        if self.enabled and not self.loopback and not (self.token and self.token.get_secret_value()):
            raise ValueError(f"binding the HTTP server to {self.host} (not loopback) needs a token "
                             "(server.token, RPN_API_TOKEN or --api-token)")
        return self


class ClusterConfig(_Strict):
    """Cluster mode on Ray (`run --cluster ADDRESS`, docs/cluster.md); ignored without it."""

    max_cameras_per_worker: int = Field(8, ge=1, le=10_000, description="Cameras one worker node takes at most.")
    worker_resource: str = Field("rpn_worker", min_length=1,
                                 description="Ray custom resource that marks a worker node (one worker per node).")
    namespace: str = Field("rpn", min_length=1, description="Ray namespace of the controller and worker actors.")
    reconcile_interval_s: float = Field(0.5, gt=0, le=60, description="How often the controller checks placements.")
    worker_timeout_s: float = Field(5.0, gt=0, description="A worker that does not answer this long takes no new cameras.")
    health_check_period_ms: int = Field(500, ge=50, description="local:N clusters: Ray's node health check period.")
    health_check_failure_threshold: int = Field(
        3, ge=1, description="local:N clusters: missed health checks before Ray declares a node dead.")


class PipelineConfig(_Strict):
    cameras: list[CameraConfig] = Field(default_factory=list)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineConfig:
        seen: set[str] = set()
        for camera in self.cameras:
            if camera.name in seen:
                raise ValueError(f"camera name {camera.name!r} is used twice")
            seen.add(camera.name)
        return self


def load_config(
    path: str | Path | None = None, data: dict[str, Any] | None = None, api_token: str | None = None
) -> PipelineConfig:
    """Load and validate a YAML config file (or a dict); errors name the file, the key and the reason.

    The HTTP server's token of a file is overridden by `api_token` (the command line), else by $RPN_API_TOKEN.
    """
    where = str(path) if path is not None else "config"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
        try:
            data = yaml.safe_load(os.path.expandvars(text)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML: {_yaml_reason(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the top level must be a mapping (cameras:, engine:, ...)")
        token = api_token or api_token_from_env()
        if token and isinstance(data.get("server"), dict):
            # Before validation: a file binding the server off loopback gets its token from the environment.
            data["server"] = {**data["server"], "token": token}
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(where, exc)) from exc


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """One line: the problem and where. PyYAML's own message quotes the offending line, which may hold a password."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def api_token_from_env() -> str | None:
    """The API token from $RPN_API_TOKEN, else from the file named by $RPN_API_TOKEN_FILE (trailing newline
    stripped); None when neither is set. An unreadable or empty file is a ConfigError (it never shows the token)."""
    token = os.environ.get(API_TOKEN_ENV)
    if token:
        return token
    path = os.environ.get(API_TOKEN_FILE_ENV)
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{API_TOKEN_FILE_ENV} {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    if not token:
        raise ConfigError(f"{API_TOKEN_FILE_ENV} {path}: the file is empty")
    return token


def format_validation_error(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # A key with a line break or control character is quoted: one line per problem, whatever the file holds.
        key = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {key}: {validation_message(err)}")
    return "\n".join(lines)


def validation_message(error: Mapping[str, Any]) -> str:
    """The reason of one pydantic error, worded for users ("unknown key" rather than "extra_forbidden")."""
    if error.get("type") == "extra_forbidden":
        return "unknown key"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def source_name_for(url: str, taken: set[str]) -> str:
    """A camera name for a `--source` given without one: the file stem or the URL's last path part."""
    base = re.split(r"[/\\]", url.rstrip("/").split("?")[0])[-1]
    base = Path(base).stem or "camera"
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("_.-")[:56] or "camera"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def parse_source_arg(arg: str, taken: set[str]) -> CameraConfig:
    """`--source PATH_OR_URL` or `--source NAME=PATH_OR_URL`."""
    name, sep, url = arg.partition("=")
    if sep and CAMERA_NAME.match(name) and "/" not in name and ":" not in name:
        return CameraConfig(name=name, url=url)
    return CameraConfig(name=source_name_for(arg, taken), url=arg)
