"""`python run_pipeline.py ...` as a child process the test talks to: stderr collected in a thread (the pipe never
fills), waits on printed lines with generous deadlines, signals, and the HTTP address it prints."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from signal import Signals
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]


class CliProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_pipeline.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT, env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    def wait_for(self, text: str, timeout: float = 120, after: int = 0) -> str:
        """The first stderr line (from line number `after` on) containing `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.proc.poll() is not None and not any(text in line for line in self.lines[after:]):
                time.sleep(0.2)  # the reader may still be catching up
                if not any(text in line for line in self.lines[after:]):
                    break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in stderr after {timeout} s (rc {self.proc.poll()}):\n{self.stderr}")

    def http_base(self, timeout: float = 120) -> str:
        line = self.wait_for("HTTP API on http://", timeout)
        return line.split("HTTP API on ", 1)[1].split()[0]

    def signal(self, sig: Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
