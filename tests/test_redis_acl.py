"""The minimal Redis ACL of docs/deploy.md, loaded as written into Debian's redis-server 7: the pipeline, a plain
subscriber and a consumer-group subscriber work through their users with nothing denied (ACL LOG stays empty), and
each user is refused what it must not do."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from pipeline.events.contract import detections_key
from tests.conftest import ROOT, run_cli
from tests.redis_servers import DEBIAN_REDIS, DEBIAN_REDIS_MISSING, RedisProcess, debian_redis_available
from tests.system_deps import needs_system

pytestmark = needs_system(debian_redis_available(), DEBIAN_REDIS_MISSING)

PASSWORDS = {"PIPELINE_PASSWORD": "pipe-Pw-1187", "READER_PASSWORD": "read-Pw-2291",
             "GROUP_READER_PASSWORD": "group-Pw-3307"}
ADMIN_PW = "admin-Pw-4410"


def documented_acl() -> str:
    text = (ROOT / "docs" / "deploy.md").read_text()
    found = re.search(r"```acl\n(.*?)```", text, re.S)
    assert found, "docs/deploy.md has no ```acl block"
    acl = found.group(1)
    for name, value in sorted(PASSWORDS.items(), key=lambda kv: -len(kv[0])):  # GROUP_READER_... first
        acl = acl.replace(name, value)
    return acl


def test_documented_acl_lets_each_user_do_its_job_and_nothing_more(
    tmp_path: Path, make_video: Callable[..., Path]
) -> None:
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(documented_acl() + f"user admin on >{ADMIN_PW} ~* &* +@all\n")  # the test reads ACL LOG
    with RedisProcess(tmp_path / "redis", DEBIAN_REDIS, args=["--aclfile", str(aclfile)]) as server:
        port = server.port
        pipe_url = f"redis://rpn-pipeline:{PASSWORDS['PIPELINE_PASSWORD']}@127.0.0.1:{port}/0"
        read_url = f"redis://rpn-reader:{PASSWORDS['READER_PASSWORD']}@127.0.0.1:{port}/0"
        group_url = f"redis://rpn-group-reader:{PASSWORDS['GROUP_READER_PASSWORD']}@127.0.0.1:{port}/0"
        config = tmp_path / "p.yaml"
        config.write_text("redis: {pubsub: true}\n")  # the Pub/Sub mirror too
        result = run_cli("run", "--config", str(config), "--source", f"door={make_video(8, seed=91)}",
                         "--redis-url", pipe_url)
        assert result.returncode == 0, result.stderr
        resumed = run_cli("run", "--config", str(config), "--source", f"door={make_video(8, seed=91)}",
                          "--redis-url", pipe_url, "--resume")  # fences the stream, then finds nothing left to do
        assert resumed.returncode == 0 and "Resuming door after frame 7" in resumed.stderr, resumed.stderr
        plain = run_cli("subscribe", "--redis-url", read_url, "--from-start", "--count", "8", "--timeout", "10")
        assert plain.returncode == 0, plain.stderr
        assert [json.loads(line)["frame"] for line in plain.stdout.splitlines()] == list(range(8))
        group = run_cli("subscribe", "--redis-url", group_url, "--group", "g", "--consumer", "c1", "--from-start",
                        "--count", "8", "--timeout", "10")
        assert group.returncode == 0, group.stderr
        assert len(group.stdout.splitlines()) == 8
        output = (result.stdout + result.stderr + resumed.stderr + plain.stdout + plain.stderr + group.stdout
                  + group.stderr)
        assert not any(pw in output for pw in PASSWORDS.values())

        admin = redis.Redis(port=port, username="rpn-pipeline", password=PASSWORDS["PIPELINE_PASSWORD"],
                            decode_responses=True)
        reader = redis.Redis.from_url(read_url, decode_responses=True)
        grouper = redis.Redis.from_url(group_url, decode_responses=True)
        with admin, reader, grouper:
            key = detections_key("rpn", "door")
            denied = [
                lambda: admin.xadd("other:x", {"a": "1"}),      # the pipeline: only its own keys
                lambda: admin.xrevrange(key, count=1),           # and no reading back beyond its checks
                lambda: admin.delete(key),
                lambda: admin.publish("other", "x"),
                lambda: reader.xadd(key, {"a": "1"}),            # readers never write
                lambda: reader.xtrim(key, maxlen=0),
                lambda: reader.delete(key),
                lambda: reader.xgroup_create(key, "g2"),
                lambda: reader.xrange("other:x"),
                lambda: grouper.xadd(key, {"a": "1"}),
                lambda: grouper.xtrim(key, maxlen=0),
                lambda: grouper.delete(key),
                lambda: grouper.config_get("*"),
            ]
            for i, call in enumerate(denied):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    call()
                    pytest.fail(f"denied[{i}] was allowed")
        with redis.Redis(port=port, username="admin", password=ADMIN_PW, decode_responses=True) as root:
            log = root.acl_log(count=1000)
        # Every denial Redis logged is one provoked above: the pipeline and subscribers were refused nothing.
        assert len(log) == len(denied), json.dumps(log, default=str)
        assert {e["username"] for e in log} == {"rpn-pipeline", "rpn-reader", "rpn-group-reader"}
        with redis.Redis.from_url(read_url, decode_responses=True) as again:
            assert again.xlen(key) == 8
