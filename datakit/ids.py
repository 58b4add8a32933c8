"""Deterministic ids: a rerun never duplicates a video or a clip.

video id: 16 hex chars of blake2b over the file's bytes (local files) or over the canonical URL.
Credentials in a URL (`user:password@`) are not part of its identity: the same file fetched with
another account, or after a password change, is the same video.
clip id: '<video_id>-<start_frame>-<end_frame>' (end exclusive), readable and unique per span.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_CHUNK = 4 << 20
_YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com"}


def file_video_id(path: str | os.PathLike) -> str:
    """Content hash of a file (streamed; identical bytes give the same id wherever they live)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_url(url: str) -> str:
    """Normalise a URL so trivial spelling differences map to one video.

    Lower-case scheme and host, drop user-info (credentials), default ports, fragments and
    tracking parameters; YouTube watch/short/youtu.be forms become
    https://www.youtube.com/watch?v=<id>.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.startswith("utm_")]
    if host in _YOUTUBE_HOSTS or host == "youtu.be":
        vid = None
        if host == "youtu.be":
            vid = parts.path.strip("/").split("/")[0]
        elif parts.path.startswith("/shorts/"):
            vid = parts.path.split("/")[2]
        else:
            vid = dict(query).get("v")
        if vid:
            return f"https://www.youtube.com/watch?v={vid}"
    path = parts.path or "/"
    return urlunsplit((scheme, host, path, urlencode(query), ""))


def url_video_id(url: str) -> str:
    return hashlib.blake2b(canonical_url(url).encode(), digest_size=8).hexdigest()


def path_error_id(path: str | os.PathLike) -> str:
    """Id for an input that cannot be read (so its error row is stable across reruns)."""
    return hashlib.blake2b(("path:" + str(Path(path).absolute())).encode(), digest_size=8).hexdigest()


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    return f"{video_id}-{int(start_frame)}-{int(end_frame)}"


def is_url(text: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) is not None
