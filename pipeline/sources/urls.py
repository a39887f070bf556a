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
