"""Passwords in source URLs stay out of the manifest.

`https://user:secret@host/v.mp4` is recorded as `https://user:***@host/v.mp4` in every manifest
column; a user-info without a password (`https://token@host/...`, often an access token) becomes
`***@host`. The real user-info is kept in `<workspace>/secrets/url-credentials.json` (mode 0600, in a
0700 folder), keyed by video id, where ingest writes it and the download stage reads it. Sharing or
exporting `tables/` or `manifest.duckdb` shares no password; deleting `secrets/` forgets them (the
downloads of those URLs then fail with a clear error until they are ingested again with their
passwords). Credentials are not part of a video's identity: the id comes from the URL without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

REDACTED = "***"
CREDENTIALS_PATH = "secrets/url-credentials.json"  # under the workspace root


def _netloc_span(url: str) -> tuple[int, int] | None:
    """Start and end of the authority ('user:pw@host:port') of a 'scheme://...' URL.

    Found by hand rather than with urlsplit/urlunsplit, which would respell the rest of the URL;
    the authority ends at the first '/', '?' or '#' (RFC 3986, section 3.2).
    """
    sep = url.find("://")
    if sep < 0:
        return None
    start = sep + 3
    end = next((i for i in range(start, len(url)) if url[i] in "/?#"), len(url))
    return start, end


def _shown_userinfo(userinfo: str) -> tuple[str, bool]:
    """(the user-info as the manifest shows it, whether the original holds a secret)."""
    user, has_password, password = userinfo.partition(":")
    if has_password and not password:  # 'user:' (an empty password): nothing to hide
        return userinfo, False
    if has_password:
        return f"{user}:{REDACTED}", password != REDACTED
    return REDACTED, userinfo != REDACTED


def split_credentials(url: str) -> tuple[str, str | None]:
    """(the URL as the manifest shows it, the secret user-info or None).

    Only the authority part changes; the rest of the URL stays exactly as given. A URL whose
    user-info is already redacted has no secret to return.
    """
    span = _netloc_span(url)
    if span is None or "@" not in url[span[0] : span[1]]:
        return url, None
    start, end = span
    userinfo, _, host = url[start:end].rpartition("@")
    shown, secret = _shown_userinfo(userinfo)
    return f"{url[:start]}{shown}@{host}{url[end:]}", userinfo if secret else None


def is_redacted(url: str) -> bool:
    """True when the URL's user-info hides a password (`user:***@` or `***@`)."""
    span = _netloc_span(url)
    if span is None or "@" not in url[span[0] : span[1]]:
        return False
    userinfo = url[span[0] : span[1]].rpartition("@")[0]
    return userinfo == REDACTED or userinfo.endswith(":" + REDACTED)


def with_credentials(url: str, userinfo: str) -> str:
    """The URL with `userinfo` as its user-info (replacing a redacted one)."""
    span = _netloc_span(url)
    if span is None:
        return url
    start, end = span
    host = url[start:end].rpartition("@")[2]
    return f"{url[:start]}{userinfo}@{host}{url[end:]}"


def redact_text(text: str, userinfo: str | None) -> str:
    """`text` with the secret of `userinfo` replaced by ***, as written and percent-decoded.

    The whole user-info is replaced wherever it appears; the bare password too when it has at
    least 4 characters (a shorter one would mangle ordinary words of the message).
    """
    if not userinfo:
        return text
    shown = _shown_userinfo(userinfo)[0]
    user, has_password, password = userinfo.partition(":")
    secret = password if has_password else user
    for form in {userinfo, unquote(userinfo)}:
        text = text.replace(form + "@", shown + "@")
    for form in {secret, unquote(secret)}:
        if len(form) >= 4:
            text = text.replace(form, REDACTED)
    return text


def credentials_path(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / CREDENTIALS_PATH


def load_credentials(workspace: str | os.PathLike) -> dict[str, str]:
    """video id -> user-info; empty when no URL had credentials."""
    path = credentials_path(workspace)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot read URL credentials from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RuntimeError(f"cannot read URL credentials from {path}: not a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def save_credentials(workspace: str | os.PathLike, new: dict[str, str]) -> None:
    """Merge `new` (video id -> user-info) into the workspace's credentials file (owner-only)."""
    if not new:
        return
    path = credentials_path(workspace)
    merged = load_credentials(workspace) | new
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode only applies to a new file
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
