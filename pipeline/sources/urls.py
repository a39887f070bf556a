"""URL helpers. Credentials never reach a log line or an event: print URLs through `redact_url`."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


_SECRET_PARAM = re.compile(r"([?&](?:password|ssl_password)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`rtsp://user:secret@host/x` -> `rtsp://user:***@host/x`, and `?password=secret` -> `?password=***`;
    URLs without a password are returned as they are."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    url = _SECRET_PARAM.sub(r"\1***", url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(urlsplit(url)._replace(netloc=f"{user}:***@{hostport}"))


def is_local_path(url: str) -> bool:
    """True for plain paths and file: URLs, False for network URLs (rtsp://, http://, ...)."""
    return "://" not in url or url.startswith("file:")


_MJPEG_PATH = re.compile(r"mjpe?g", re.IGNORECASE)
_MJPEG_QUERY = re.compile(r"(?:^|&)action=stream(?:&|$)")  # mjpg-streamer's /?action=stream


def guess_format(url: str) -> str | None:
    """The FFmpeg input format a camera URL implies, or None to let FFmpeg probe the data.

    - `/dev/videoN` -> `v4l2` (a webcam).
    - http(s) URL whose path ends in `.m3u8` -> `hls` (a live HLS playlist).
    - http(s) URL that names MJPEG (`.../video.mjpg`, `/mjpeg`, `/axis-cgi/mjpg/video.cgi`, `/?action=stream`) ->
      `mpjpeg` (multipart/x-mixed-replace JPEG frames, as IP cameras and mjpg-streamer serve them).
    A camera's `format` setting overrides this guess.
    """
    if url.startswith("/dev/video"):
        return "v4l2"
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https"):
        return None
    if parts.path.lower().endswith(".m3u8"):
        return "hls"
    if _MJPEG_PATH.search(parts.path) or _MJPEG_QUERY.search(parts.query):
        return "mpjpeg"
    return None
