"""The deployment files in deploy/ agree with each other and with the code (no Docker needed)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "pipeline.example.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"

EXAMPLE_ENV = {"CAM1_PASSWORD": "cam1-secret", "CAM2_PASSWORD": "cam2-secret", "REDIS_PASSWORD": "redis-secret"}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def base_image() -> str:
    """The FROM image, with ${ARG} references resolved from the ARG defaults declared before it."""
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    raise AssertionError("deploy/Dockerfile has no FROM")


def exec_form(keyword: str) -> list[str]:
    """The last ENTRYPOINT or CMD, which must be in exec (JSON) form so signals reach the pipeline."""
    values = [rest for kw, rest in dockerfile_instructions() if kw == keyword]
    assert values, f"deploy/Dockerfile has no {keyword}"
    return json.loads(values[-1])


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_example_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RPN_API_TOKEN", "api-secret")
    config = load_config(EXAMPLE)

    assert len(config.cameras) == 2
    for camera in config.cameras:
        assert camera.url.startswith("rtsp://")
        assert "${" not in camera.url
        assert camera.transport == "tcp"
    assert {urlsplit(c.url).password for c in config.cameras} == {"cam1-secret", "cam2-secret"}
    assert config.engine.backend == "auto"
    assert config.redis.url == "redis://:redis-secret@redis:6379/0"
    # The HTTP server listens beyond loopback, with the token compose passes in the environment.
    assert config.server.enabled and config.server.host == "0.0.0.0"
    assert config.server.token is not None and config.server.token.get_secret_value() == "api-secret"


def test_example_config_refuses_an_open_http_server_without_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RPN_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="needs a token"):
        load_config(EXAMPLE)


def test_compose_passes_every_variable_the_example_config_uses() -> None:
    used = set(re.findall(r"\$\{(\w+)\}", EXAMPLE.read_text(encoding="utf-8")))
    used.discard("VAR")  # the comment that explains the syntax
    env = compose()["services"]["pipeline"]["environment"]
    assert used == set(EXAMPLE_ENV)
    assert used <= set(env)


def test_compose_pipeline_service() -> None:
    services = compose()["services"]
    pipeline = services["pipeline"]

    cmd = exec_form("CMD")
    config_path = cmd[cmd.index("--config") + 1]
    assert f"./{EXAMPLE.name}:{config_path}:ro" in pipeline["volumes"]
    assert (COMPOSE.parent / EXAMPLE.name).is_file()
    assert any(str(v).split(":")[1] == "/models" for v in pipeline["volumes"])

    assert pipeline["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]
    assert "/healthz" in " ".join(pipeline["healthcheck"]["test"])
    assert "RPN_API_TOKEN" in pipeline["environment"]
    for port in pipeline["ports"]:
        assert str(port).startswith("127.0.0.1:"), f"pipeline port {port} is published beyond localhost"
    assert pipeline["restart"] == "unless-stopped"

    build = pipeline["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE

    devices = pipeline["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_compose_redis_requires_a_password_and_stays_on_localhost() -> None:
    redis = compose()["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--requirepass" in " ".join(redis["command"])
    assert "${REDIS_PASSWORD" in redis["environment"]["REDIS_PASSWORD"]
    for port in redis.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"redis port {port} is published beyond localhost"


def test_dockerfile_uses_a_tensorrt_base_and_a_non_root_user() -> None:
    image = base_image()
    assert image.startswith("nvcr.io/nvidia/tensorrt:"), image
    assert re.search(r":\d\d\.\d\d-py3\b", image), image

    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "deploy/Dockerfile has no USER: the pipeline would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}

    assert exec_form("ENTRYPOINT") == ["rpn-pipeline"]
    assert exec_form("CMD")[:1] == ["run"]


def test_dockerfile_copies_files_that_exist() -> None:
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            sources += [s for s in rest.split()[:-1] if not s.startswith("--")]
    assert "setup.py" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"deploy/Dockerfile copies {source}, which is missing"
