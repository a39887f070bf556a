"""Progress bars for file runs in a terminal (a pseudo-terminal here), with log lines kept intact."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, run_cli

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_in_terminal(args: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run `python run_pipeline.py ARGS` with stderr on a 120x40 pseudo-terminal; (exit code, stdout, terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a bare pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), *args], stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                screen += data
            elif proc.poll() is not None:
                break
        out = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), screen.decode(errors="replace")


def test_file_run_in_a_terminal_shows_a_progress_bar_and_intact_log_lines(
    make_video: Callable[..., Path], redis_url: str, prefix: str
) -> None:
    video = make_video(60, seed=73)
    code, out, screen = run_in_terminal(["run", "--source", f"clip={video}", "--redis-url", redis_url,
                                         "--prefix", prefix])
    assert code == 0, screen
    assert re.search(r"clip: 100%\|[^|\r\n]*\| 60/60 \[", screen), screen  # the bar, total from the header
    # Each log line starts a line of its own (tqdm clears the bars first), never glued to a bar.
    lines = [ANSI.sub("", line).rstrip("\r").split("\r")[-1] for line in screen.split("\n")]
    finished = [line for line in lines if f"camera 'clip' ({video}): finished after 60 frames" in line]
    assert finished and all(re.match(r"\d\d:\d\d:\d\d INFO +pipeline\.sources\.decoder: camera 'clip'", f) for f in finished)
    assert "Run finished" in out


def test_no_progress_bar_without_a_terminal(make_video: Callable[..., Path], redis_url: str, prefix: str) -> None:
    result = run_cli("run", "--source", f"clip={make_video(60, seed=73)}", "--redis-url", redis_url,
                     "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr and "frame/s" not in result.stderr
