#!/usr/bin/python3
"""A tiny RTSP camera server for tests: serves raw Annex-B H.264 files as looping live cameras.

Runs under Debian's ``/usr/bin/python3`` (GStreamer's ``gi`` bindings do not import in a venv)::

    rtsp_server.py --port 8554 --mount /cam1=a.h264 [--mount /cam2=b.h264] [--fps 25]
                   [--bind 127.0.0.1] [--user U --password P] [--protocols tcp,udp]

Each mount is one shared pipeline (all clients see the same stream), paced in real time at the file's frame
rate, over RTSP/TCP or RTP/UDP (``--protocols`` limits the lower transports a client may set up: a camera that
only speaks UDP refuses TCP with 461 Unsupported transport). ``--fps`` is only a fallback: h264parse prefers the rate in the SPS's VUI
timing info, which x264 (and so lab.synth) always writes. Prints ``READY <port>`` on stdout once
listening (``--port 0`` picks a free port). Exits 0 on SIGTERM/SIGINT. Needs python3-gi,
gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{base,good,bad} (``make system-deps``).

The files must have no B-frames (x264 ``tune=zerolatency``): h264parse only interpolates DTS for a raw
stream, and a pad probe copies it into PTS, which is right only when decode order equals display order.
"""
from __future__ import annotations

import argparse
import signal
import sys
from fractions import Fraction
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

ROLE = "user"


def _pts_from_dts(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    buf = info.get_buffer()
    if buf is not None and buf.pts == Gst.CLOCK_TIME_NONE:
        buf.pts = buf.dts
    return Gst.PadProbeReturn.OK


def _on_media_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
    parse = media.get_element().get_by_name("parse")
    parse.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, _pts_from_dts)


PROTOCOLS = {"tcp": GstRtsp.RTSPLowerTrans.TCP, "udp": GstRtsp.RTSPLowerTrans.UDP}


def make_factory(path: Path, fps: Fraction, permissions: GstRtspServer.RTSPPermissions | None,
                 protocols: GstRtsp.RTSPLowerTrans = PROTOCOLS["tcp"] | PROTOCOLS["udp"]
                 ) -> GstRtspServer.RTSPMediaFactory:
    # multifilesrc loop=true re-reads the file forever; the caps' framerate lets h264parse interpolate
    # timestamps across loops; identity sync=true paces buffers at real time (and, returning NO_PREROLL,
    # makes the pipeline live: clients join "now", no seeking in the shared pipeline).
    location = str(path).replace("\\", "\\\\").replace('"', '\\"')
    launch = (f'( multifilesrc location="{location}" loop=true '
              f'caps="video/x-h264,stream-format=byte-stream,framerate={fps.numerator}/{fps.denominator}" '
              f'! h264parse name=parse config-interval=-1 ! identity sync=true '
              f'! rtph264pay name=pay0 pt=96 )')
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    factory.set_protocols(protocols)
    factory.connect("media-configure", _on_media_configure)
    if permissions is not None:
        factory.set_permissions(permissions)
    return factory


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8554, help="0 picks a free port")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--mount", action="append", required=True, metavar="/PATH=FILE.h264")
    ap.add_argument("--fps", type=Fraction, default=Fraction(25), help="if the SPS has no timing info")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--protocols", default="tcp,udp", help="lower transports offered: tcp, udp or tcp,udp")
    args = ap.parse_args(argv)
    names = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not names or any(p not in PROTOCOLS for p in names):
        ap.error(f"--protocols wants tcp, udp or tcp,udp, got {args.protocols!r}")
    protocols = PROTOCOLS[names[0]]
    for name in names[1:]:
        protocols |= PROTOCOLS[name]
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.bind)
    server.set_service(str(args.port))

    permissions = None
    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", ROLE)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)  # no default token: anonymous requests get 401
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(ROLE, "media.factory.access", True)
        permissions.add_permission_for_role(ROLE, "media.factory.construct", True)

    mounts = server.get_mount_points()
    for spec in args.mount:
        mount, sep, file = spec.partition("=")
        path = Path(file)
        if not sep or not mount.startswith("/") or not path.is_file():
            ap.error(f"--mount wants /PATH=EXISTING_FILE, got {spec!r}")
        mounts.add_factory(mount, make_factory(path.resolve(), args.fps, permissions, protocols))

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on {args.bind}:{args.port}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
