"""One switch for tests that need system packages (GStreamer, Debian's redis-server 7, Chromium).

Locally a missing package skips those tests with the reason; with RPN_REQUIRE_SYSTEM_DEPS=1 (set by .ci/run) they
fail instead, so a broken install can never pass as skipped.
"""
from __future__ import annotations

import os

import pytest

REQUIRE_ENV = "RPN_REQUIRE_SYSTEM_DEPS"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def needs_system(available: bool, missing: str) -> pytest.MarkDecorator:
    """Mark a test (or `pytestmark`) as needing a system package: skipped when `available` is false, or failed
    with `missing` as the reason under RPN_REQUIRE_SYSTEM_DEPS=1."""
    if available:
        return pytest.mark.system_deps
    if required():
        return pytest.mark.system_deps(missing=missing)
    return pytest.mark.skip(reason=missing)
