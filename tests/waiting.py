"""Waiting on events in tests: poll a condition with a generous deadline instead of sleeping a fixed time."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.05) -> T:
    """Poll `condition` until it returns something true, and return that; AssertionError naming `what` once
    `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
