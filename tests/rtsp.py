"""A real RTSP camera server for tests: runs ``tests/rtsp_server.py`` (GStreamer) under Debian's Python.

    cam = make_camera_file(tmp_path / "cam.h264")
    with RtspServer({"/cam1": cam}) as server:
        container = av.open(server.url("/cam1"), options=rtsp_options("tcp"), timeout=(5, 2))

``gi`` only imports under the system ``/usr/bin/python3`` (not in a venv), so the server is a child process;
tests should ``pytest.skip(GSTREAMER_MISSING)`` when :func:`gstreamer_available` is false.
"""
from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
GSTREAMER_MISSING = (f"GStreamer RTSP server not importable under {SYSTEM_PYTHON} "
                     "(run `make system-deps` to install the Debian packages)")
_ELEMENTS = ("multifilesrc", "h264parse", "identity", "rtph264pay")
_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
          f"missing = [e for e in {_ELEMENTS!r} if Gst.ElementFactory.find(e) is None]; "
          "assert not missing, missing")


@functools.cache
def gstreamer_available() -> bool:
    """True when the server script's imports and GStreamer elements work under ``/usr/bin/python3``."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server itself takes ``--port 0`` race-free)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rtsp_options(transport: str = "tcp", timeout_s: float = 2.0) -> dict[str, str]:
    """PyAV ``av.open`` options for a quick, bounded RTSP open (pair with ``timeout=(open_s, read_s)``)."""
    return {"rtsp_transport": transport, "timeout": str(int(timeout_s * 1e6)),
            "analyzeduration": "500000", "probesize": "500000"}


def make_camera_file(path: str | Path, frames: int = 50, width: int = 320, height: int = 240, fps: int = 25,
                     seed: int = 0) -> Path:
    """Write a raw Annex-B H.264 clip (no B-frames, one keyframe a second) for :class:`RtspServer`."""
    from lab.synth import SceneSpec, write_video

    path = Path(path)
    if path.suffix.lower() not in (".h264", ".264"):
        raise ValueError(f"camera file must end in .h264, got {path}")
    write_video(path, SceneSpec(width=width, height=height, fps=fps, frames=frames, gop=fps), seed=seed)
    return path


class RtspServer:
    """``tests/rtsp_server.py`` as a child process: start, kill, restart on the same port, pause, resume."""

    def __init__(self, mounts: Mapping[str, str | Path], port: int = 0, fps: int | str = 25,
                 bind: str = "127.0.0.1", user: str | None = None, password: str | None = None,
                 start_timeout: float = 15.0, protocols: str = "tcp,udp") -> None:
        self.mounts = {("/" + m.lstrip("/")): Path(f) for m, f in mounts.items()}
        self.port, self.fps, self.bind = port, fps, bind
        self.user, self.password = user, password
        self.start_timeout = start_timeout
        self.protocols = protocols  # lower transports the server offers: "tcp", "udp" or "tcp,udp"
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: tempfile._TemporaryFileWrapper[str] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RtspServer:
        """Launch the server and wait for ``READY <port>``; raise RuntimeError with its stderr on failure."""
        if self.running:
            raise RuntimeError("RTSP server already running")
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--bind", self.bind,
               "--fps", str(self.fps), "--protocols", self.protocols]
        for mount, file in self.mounts.items():
            cmd += ["--mount", f"{mount}={file}"]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or ""]
        self._close_stderr()
        self._stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: GStreamer warnings never block it
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    self.port = int(line.split()[1])  # restarts reuse this port
                    return self
                if not line:  # stdout closed: the process is exiting
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=5)
        code = self.proc.poll()
        self._reap(signal.SIGKILL)
        why = f"exited with code {code}" if code is not None else f"sent no READY in {self.start_timeout:g} s"
        raise RuntimeError(f"RTSP server {why}: {' '.join(cmd)}\n{self.stderr}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``); no-op when not running."""
        if self.proc is not None and self.proc.poll() is None:
            self._reap(signal.SIGTERM, timeout)
        self._close_stdout()

    def kill(self) -> None:
        """SIGKILL: the camera vanishes without closing its sessions properly."""
        if self.proc is not None and self.proc.poll() is None:
            self._reap(signal.SIGKILL)
        self._close_stdout()

    def restart(self) -> RtspServer:
        """Stop (if still running) and start again on the same port."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the camera hangs, its sockets stay open but nothing is sent or answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def url(self, mount: str, user: str | None = None, password: str | None = None) -> str:
        cred = ""
        if user is not None:
            cred = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
        return f"rtsp://{cred}{self.bind}:{self.port}/{mount.lstrip('/')}"

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._close_stderr()

    # ------------------------------------------------------------------ internals
    def _signal(self, sig: int) -> None:
        if not self.running:
            raise RuntimeError("RTSP server is not running")
        self.proc.send_signal(sig)

    def _reap(self, sig: int, timeout: float = 5.0) -> None:
        self.proc.send_signal(sig)
        if sig != signal.SIGKILL:
            self.proc.send_signal(signal.SIGCONT)  # a paused server must run to handle SIGTERM
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _close_stdout(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
