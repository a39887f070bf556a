"""schemathesis against the API's own OpenAPI schema, on a real uvicorn server over a running pipeline: every
operation fuzzed with the token and without it. No 5xx, every status code and body as the schema documents, and the
pipeline still runs and publishes afterwards. RPN_FUZZ_EXAMPLES raises the examples per operation (`make chaos`)."""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from engines import Detector
from pipeline.api.server import ApiServer, create_app
from pipeline.config import load_config
from pipeline.runner import Pipeline

TOKEN = "fuzz-token-6617"
EXAMPLES = int(os.environ.get("RPN_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _app_schema() -> dict[str, object]:
    """The schema FastAPI builds from the routes (not served: openapi_url=None). Building it needs no pipeline."""
    return create_app(None, TOKEN).openapi()  # type: ignore[arg-type]


schema = schemathesis.openapi.from_dict(_app_schema())


class Served:
    def __init__(self, pipeline: Pipeline, server: ApiServer, media: Path) -> None:
        self.pipeline, self.server, self.media = pipeline, server, media


@pytest.fixture(scope="module")
def served(detector: Detector, redis_server: str, make_video: Callable[..., Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    media = tmp_path_factory.mktemp("media")
    (media / "clip.mp4").write_bytes(make_video(10, seed=93).read_bytes())
    prefix = f"fz{uuid.uuid4().hex[:6]}"
    config = load_config(data={"redis": {"prefix": prefix}, "server": {"media_roots": [str(media)]},
                               "runtime": {"reconnect": {"initial_s": 0.5, "max_s": 2.0}}})
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    pipeline = Pipeline(config, detector, client, until_sources_end=False)
    pipeline.start()
    server = ApiServer(pipeline, "127.0.0.1", 0, TOKEN)
    server.start()
    try:
        yield Served(pipeline, server, media)
    finally:
        server.stop()
        pipeline.request_stop()
        assert pipeline.wait(timeout=60)
        client.close()


FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate])


@schema.parametrize()
@FUZZ
def test_every_operation_with_the_token(case: schemathesis.Case, served: Served) -> None:
    case.call_and_validate(base_url=served.server.url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS,
                           timeout=60)


def test_the_pipeline_survived_the_fuzzing(served: Served) -> None:
    with httpx.Client(base_url=served.server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        for camera in http.get("/api/cameras").json():
            assert http.delete(f"/api/cameras/{camera['name']}").status_code == 200
        assert all(stage.is_alive() for stage in served.pipeline.stages)
        r = http.post("/api/cameras", json={"name": "after-fuzz", "url": str(served.media / "clip.mp4")})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 120
        while http.get("/api/cameras/after-fuzz").json()["processed"] < 10:
            assert time.monotonic() < deadline, "the pipeline stopped processing after the fuzzing"
            time.sleep(0.1)


@schema.parametrize()
@FUZZ
def test_every_operation_without_the_token(case: schemathesis.Case, served: Served) -> None:
    response = case.call_and_validate(base_url=served.server.url, checks=CHECKS, timeout=60)
    if case.path != "/healthz":
        assert response.status_code in (401, 429), (case.path, response.status_code)


def test_the_pipeline_survived_unauthenticated_fuzzing(served: Served) -> None:
    assert all(stage.is_alive() for stage in served.pipeline.stages)
    assert served.pipeline.is_running("after-fuzz") or served.pipeline.ctx.stream("after-fuzz").published >= 10
    # So many failures from one address: it is now refused even with the right token, until the window passes.
    with httpx.Client(base_url=served.server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        assert http.get("/api/cameras").status_code == 429
