"""`--cluster ADDRESS`, checked without importing Ray."""
from __future__ import annotations

import re

from pipeline.config import ConfigError

LOCAL = re.compile(r"^local:([0-9]+)$")


def parse_address(address: str) -> int | None:
    """N for `local:N`, None for a Ray address; ConfigError for a malformed `local:`."""
    if address.startswith("local"):
        match = LOCAL.match(address)
        if not match or not 1 <= int(match.group(1)) <= 64:
            raise ConfigError(f"--cluster {address}: expected local:N with N worker nodes, 1..64 (e.g. local:3)")
        return int(match.group(1))
    if not address.strip():
        raise ConfigError("--cluster: empty address; give auto, ray://HOST:10001, HOST:PORT or local:N")
    return None
