"""Real HTTP cameras for tests: a live HLS playlist and an MJPEG stream (multipart/x-mixed-replace).

Run as a child process (so a test can kill it and start it again on the same port, as a camera reboots)::

    python tests/http_camera.py hls --video clip.mp4 --dir DIR [--port P] [--segment-s 1]
    python tests/http_camera.py mjpeg --jpegs DIR [--fps 10] [--port P]

``hls`` remuxes the H.264 of ``--video`` (no re-encoding), looping, at real time into FFmpeg's ``hls`` muxer in
``DIR`` (``live.m3u8`` and its ``.ts`` segments, a sliding window of 5, old ones deleted) while a threaded
``http.server`` serves ``DIR``: the playlist is written while clients read it, as by a camera or an encoder.
``mjpeg`` sends the ``*.jpg`` files of ``--jpegs`` in name order, looping, at ``--fps`` to each client of
``/video.mjpg`` as ``multipart/x-mixed-replace`` parts (the format IP cameras and mjpg-streamer use).
Prints ``READY <port>`` once listening (for ``hls``, once the playlist has its first segment) (``--port 0`` picks a free one). :class:`HttpCamera` drives it.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BOUNDARY = "rpnframe"


def write_hls(video: Path, out_dir: Path, segment_s: float, stop: threading.Event) -> None:
    """Remux ``video`` looping into a live HLS playlist at real time until ``stop``."""
    import av

    with av.open(str(video)) as probe:
        src = probe.streams.video[0]
        pts = [p.pts for p in probe.demux(src) if p.size]
        duration = max(pts) - min(pts) + (pts[1] - pts[0] if len(pts) > 1 else 1)  # of one loop, in time_base
    sink = av.open(str(out_dir / "live.m3u8"), "w", format="hls", options={
        "hls_time": str(segment_s), "hls_list_size": "5", "hls_flags": "delete_segments+omit_endlist",
        "hls_segment_filename": str(out_dir / "seg%05d.ts"),
    })
    started = time.monotonic()
    try:
        for loop in range(10**9):
            with av.open(str(video)) as source:  # demuxed afresh each loop: muxing rescales packets in place
                src = source.streams.video[0]
                if loop == 0:
                    stream = sink.add_stream_from_template(src)
                shift = loop * duration
                for p in source.demux(src):
                    if not p.size:
                        continue
                    due = started + float((p.dts + shift) * src.time_base)
                    if stop.wait(max(0.0, due - time.monotonic())):
                        return
                    p.pts, p.dts, p.stream = p.pts + shift, p.dts + shift, stream
                    sink.mux(p)
    finally:
        with contextlib.suppress(Exception):
            sink.close()


class _MjpegHandler(SimpleHTTPRequestHandler):
    frames: list[bytes] = []
    fps: float = 10.0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?")[0] != "/video.mjpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        started, i = time.monotonic(), 0
        try:
            while True:
                jpeg = self.frames[i % len(self.frames)]
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                 .encode() + jpeg + b"\r\n")
                i += 1
                time.sleep(max(0.0, started + i / self.fps - time.monotonic()))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def log_message(self, *args: object) -> None:
        pass


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("hls", "mjpeg"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--video", type=Path, help="hls: H.264 video to loop")
    ap.add_argument("--dir", type=Path, help="hls: folder for the playlist and segments")
    ap.add_argument("--segment-s", type=float, default=1.0)
    ap.add_argument("--jpegs", type=Path, help="mjpeg: folder of *.jpg frames")
    ap.add_argument("--fps", type=float, default=10.0)
    args = ap.parse_args(argv)

    stop = threading.Event()
    writer = None
    if args.kind == "hls":
        args.dir.mkdir(parents=True, exist_ok=True)
        for old in [*args.dir.glob("*.ts"), *args.dir.glob("*.m3u8")]:
            old.unlink()  # a restarted camera starts a new playlist
        handler = functools.partial(_QuietFiles, directory=str(args.dir))
        writer = threading.Thread(target=write_hls, args=(args.video, args.dir, args.segment_s, stop), daemon=True)
        writer.start()
        deadline = time.monotonic() + 30
        while not (args.dir / "live.m3u8").exists() and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # serve once the first segment is out, as a camera does once it is up
    else:
        _MjpegHandler.frames = [p.read_bytes() for p in sorted(args.jpegs.glob("*.jpg"))]
        _MjpegHandler.fps = args.fps
        handler = _MjpegHandler
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()
    stop.set()
    if writer is not None:
        writer.join(timeout=5)
    return 0


class HttpCamera:
    """This script as a child process, like ``tests.rtsp.RtspServer``: start, kill, restart on the same port,
    pause and resume."""

    def __init__(self, *args: str, start_timeout: float = 30.0) -> None:
        self.args, self.port, self.start_timeout = list(args), 0, start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile("w+")

    def start(self) -> HttpCamera:
        cmd = [sys.executable, str(Path(__file__).resolve()), *self.args, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    self.port = int(line.split()[1])  # restarts reuse it
                    return self
        self.kill()
        self._stderr.seek(0)
        raise RuntimeError(f"HTTP camera did not start: {' '.join(cmd)}\n{self._stderr.read()}")

    def kill(self) -> None:
        """SIGKILL: the camera vanishes mid-stream."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def pause(self) -> None:
        """SIGSTOP: the camera hangs; its sockets stay open but nothing is sent or answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> HttpCamera:
        self.kill()
        return self.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def __enter__(self) -> HttpCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._stderr.close()


if __name__ == "__main__":
    sys.exit(main())
