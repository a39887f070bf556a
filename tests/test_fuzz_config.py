"""Property-based tests (hypothesis) over YAML config files and camera URLs: every input is either a valid config or
a ConfigError whose every line reads `FILE: key: reason` (the CLI then exits 2), never another exception; and no
password of a camera or Redis URL ever appears in a message. RPN_FUZZ_EXAMPLES raises the count (`make chaos`)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, PipelineConfig, load_config, parse_source_arg
from tests.conftest import run_cli

EXAMPLES = int(os.environ.get("RPN_FUZZ_EXAMPLES", "150"))
SECRET = "Zq9-secret-PW"  # in every generated URL's password; must never be echoed
# No shrinking: a failure is reported as found (shrinking YAML text can take minutes on 2 busy cores).
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.reuse, Phase.generate], report_multiple_bugs=False)

KEYS = {
    "cameras": None, "engine": ["backend", "arch", "weights", "score_threshold", "threads", "device", "frame_size"],
    "batching": ["max_batch", "max_delay_ms"],
    "redis": ["url", "prefix", "maxlen", "password", "username", "pubsub", "buffer_max_entries", "flush_timeout_s",
              "retry_initial_s", "ca_file"],
    "runtime": ["queue_size", "live_queue_size", "drain_timeout_s", "reconnect"],
    "server": ["host", "port", "token", "media_roots"],
}
CAMERA_KEYS = ["name", "url", "options", "transport", "open_timeout_s", "read_timeout_s", "realtime", "max_fps"]

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True), text)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(text, inner, max_size=3)), max_leaves=6)
hosts = st.sampled_from(["127.0.0.1", "cam.local", "[::1]", "", "ex ample", "h:99999", "a" * 300])
schemes = st.sampled_from(["rtsp", "rtsps", "http", "https", "redis", "rediss", "unix", "file", "madeup", "", "RTSP"])
users = st.sampled_from(["", "user", "us%40er", "a:b"])
urls = st.builds(lambda s, u, h, p: f"{s}://{u}:{SECRET}@{h}/{p}" if u else f"{s}://:{SECRET}@{h}/{p}",
                 schemes, users, hosts, st.text(max_size=10))
cameras = st.lists(st.fixed_dictionaries({}, optional={k: (urls if k == "url" else values) for k in CAMERA_KEYS}),
                   max_size=3)
sections = st.fixed_dictionaries({}, optional={
    name: cameras if keys is None else st.one_of(
        values, st.fixed_dictionaries({}, optional={k: (urls if k == "url" else values) for k in keys}))
    for name, keys in KEYS.items()
} | {"bogus": values})


def check(path: Path, raw: str) -> None:
    path.write_text(raw, encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert SECRET not in message, message
        assert len(message.splitlines()) == message.count("\n") + 1, message  # no stray line breaks
        for line in message.split("\n"):
            assert line.startswith(f"{path}: "), message
            assert len(line) > len(f"{path}: ") + 3, message
        return
    assert isinstance(config, PipelineConfig)
    assert SECRET not in repr(config) and SECRET not in str(config.model_dump(mode="json").get("cameras"))


@FUZZ
@given(data=sections)
def test_structured_configs_are_valid_or_refused_naming_file_and_key(tmp_path_factory, data: dict) -> None:
    path = tmp_path_factory.mktemp("cfg") / "pipeline.yaml"
    check(path, yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(data=sections, cut=st.integers(0, 400), junk=st.sampled_from(["", ":", "- [", "\t", "{", "&a *b", "'", "%"]))
def test_broken_yaml_is_refused_without_a_traceback_or_a_password(tmp_path_factory, data: dict, cut: int,
                                                                  junk: str) -> None:
    raw = yaml.safe_dump(data, allow_unicode=True)
    raw = raw[:cut] + junk + raw[cut:]
    raw += f"\nextra: rtsp://u:{SECRET}@h/x: {junk}\n"  # a URL on a broken line: YAML errors quote the line
    check(tmp_path_factory.mktemp("cfg") / "pipeline.yaml", raw)


@FUZZ
@given(url=st.one_of(urls, st.text(max_size=40)), name=st.one_of(st.none(), text))
def test_source_args_are_valid_or_refused_without_the_password(url: str, name: str | None) -> None:
    arg = url if name is None else f"{name}={url}"
    try:
        camera = parse_source_arg(arg, set())
    except ValueError as exc:  # pydantic's ValidationError: the CLI reports it as a usage error
        assert SECRET not in str(exc).replace(f"input_value='{arg}'", ""), str(exc)
        return
    assert re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", camera.name)


def test_cli_exits_2_with_file_key_reason_and_no_password(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"cameras:\n  - name: a\n    url: rtsp://u:{SECRET}@h/x\n    transport: pigeon\n"
                    f"redis: {{url: 'http://:{SECRET}@h'}}\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert f"{path}: cameras.0.transport: " in result.stderr and f"{path}: redis.url: must start" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
    path.write_text(f"cameras:\n  - name: a\n    url: rtsp://u:{SECRET}@h/x: [\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2 and f"{path}: not valid YAML" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
