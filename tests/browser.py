"""Headless Chromium for tests: screenshots of the live web view.

Debian's `chromium` (`make system-deps` installs it); flags from ../shared/ENVIRONMENT.md. Tests should
``pytest.skip(CHROMIUM_MISSING)`` when :func:`find_chromium` returns None.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_MISSING = "chromium not found on PATH (run `make system-deps` to install the Debian package)"


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(url: str, out: Path, width: int = 1280, height: int = 800, budget_ms: int = 5000,
               timeout: float = 90.0) -> Path:
    """Load `url` in headless Chromium, let its scripts run for `budget_ms` of virtual time, save a PNG."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError(CHROMIUM_MISSING)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", "--force-device-scale-factor=1",
            "--hide-scrollbars", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium exited with {result.returncode}, no screenshot: {result.stderr[-2000:]}")
    return out
