"""Download stage: fetch URL sources into the workspace's media folder.

Direct file URLs go over HTTP(S): streamed to `<media_dir>/<video_id>.part`, resumed with a Range
request when a killed run left a part behind, checked against Content-Length, then renamed
atomically to `<media_dir>/<video_id>.<ext>` (the extension comes from a whitelist: file magic,
Content-Type or URL suffix; never from the URL as text). Site URLs (YouTube, Vimeo... any URL that a
yt-dlp extractor other than the generic one claims) and HLS/DASH manifests go through yt-dlp's
Python API.

Every URL ends as one `downloads` row. Transient failures (5xx, 408, 429, timeouts, stalls,
truncated bodies, connection errors) are retried within the run with exponential backoff and
jitter, honouring Retry-After; when the run's attempts are spent the row is 'retry' and the next
run tries again, until `max_attempts` attempts over all runs make it 'error'. Permanent
failures (other 4xx, too large, redirect loops, a port that does not speak HTTP, an HTML/JSON/text
body instead of a video) are 'error' at once.

A body sent with a Content-Encoding (gzip, deflate; br/zstd when their decoders are installed)
despite our `Accept-Encoding: identity` is decoded while streaming, so the saved file is the video
itself; an encoding we cannot decode is an error. The saved file's first bytes are checked before
it is published: a page, JSON or text body is refused whatever its Content-Type says.

URL passwords: the manifest holds `user:***@host` (see `datakit.credentials`); the real user-info
comes from `<workspace>/secrets/` at setup and is redacted from every error message. Time, sleeps
and backoff jitter go through `self.clock` and `self.rng`, which tests replace.
"""

from __future__ import annotations

import email.utils
import http
import http.client
import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from datakit.credentials import (
    CREDENTIALS_PATH,
    is_redacted,
    load_credentials,
    redact_text,
    split_credentials,
    with_credentials,
)
from datakit.lazy import lazy_import
from datakit.stage import Rows, Stage, WorkerContext, option
from datakit.tables import Column as C
from datakit.tables import Table

requests = lazy_import("requests")  # imported on first use: listing stages must stay cheap
urllib3 = lazy_import("urllib3")

TABLES = (
    Table.marker(
        "downloads",
        C("video_id", "VARCHAR", "id of the URL source"),
        "One row per URL source after `download` tried it.",
        (
            C("url", "VARCHAR", "the URL that was fetched (a password as ***)"),
            C("method", "VARCHAR", "'http' or 'yt-dlp'"),
            C("path", "VARCHAR", "absolute path of the downloaded file (sanitised name under media/)"),
            C("bytes", "BIGINT", "size of the downloaded file"),
            C("http_status", "INTEGER", "last HTTP status code seen, if any"),
            C("retry_after_s", "DOUBLE", "server-requested wait (Retry-After) of the last failure, if any"),
        ),
    ),
)

DEFAULT_USER_AGENT = "datakit/0.1 (video dataset downloader)"
DEFAULT_YTDLP_FORMAT = "bv*[height<=?720]+ba/b[height<=?720]/b"
# Without ffmpeg yt-dlp cannot merge separate video and audio streams: take a single file.
YTDLP_FORMAT_NO_FFMPEG = "b[height<=?720]/b"

# Extensions a downloaded file may get. Anything else is saved as `.bin`.
VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "3gp", "ogv", "wmv")
FALLBACK_EXT = "bin"
CONTENT_TYPE_EXTS = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/x-matroska": "mkv",
    "video/quicktime": "mov",
    "video/x-msvideo": "avi",
    "video/avi": "avi",
    "video/x-m4v": "m4v",
    "video/mpeg": "mpg",
    "video/mp2t": "ts",
    "video/x-flv": "flv",
    "video/3gpp": "3gp",
    "video/ogg": "ogv",
    "video/x-ms-wmv": "wmv",
}
MANIFEST_SUFFIXES = (".m3u8", ".mpd")  # adaptive streams: only yt-dlp can assemble them

_CHUNK = 256 * 1024
_SNIFF_BYTES = 512  # head of a saved body checked for a container signature
_counter_lock = threading.Lock()  # module level, so the stage itself stays picklable
_thread = threading.local()  # one requests.Session (keep-alive pool) per worker thread


class SystemClock:
    """Wall-clock time and sleeping for retries; tests swap in a fake that records the waits."""

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Failure(Exception):
    """One failed attempt: transient ones are retried, permanent ones end the item."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        http_status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.http_status = http_status
        self.retry_after = retry_after


@dataclass(kw_only=True)
class DownloadStage(Stage):
    """Download URL sources (HTTP with retries and resume; yt-dlp for site URLs)."""

    name: ClassVar[str] = "download"
    marker_table: ClassVar[str] = "downloads"
    io_bound: ClassVar[bool] = True
    tables = TABLES
    default_workers: ClassVar[int] = 8

    timeout_s: float = option(
        30.0, "Connect timeout, and the longest wait for the next byte of a body.", min=0.001
    )
    max_retries: int = option(4, "Attempts per URL within one run, the first included.", min=1)
    backoff_base_s: float = option(
        0.5, "Wait before the 2nd attempt; doubles each attempt, with jitter.", min=0
    )
    backoff_cap_s: float = option(30.0, "Longest backoff wait.", min=0)
    max_wait_s: float = option(
        60.0, "A longer Retry-After is not slept: the row becomes 'retry' with retry_at.", min=0
    )
    max_bytes: int = option(
        2 * 1024**3, "Larger files are an error (by Content-Length, or while streaming).", min=1
    )
    max_attempts: int = option(8, "Attempts over all runs; then a transient failure becomes 'error'.", min=1)
    max_redirects: int = option(10, "More redirects are an error.", min=0)
    use_ytdlp: str = option(
        "auto", "auto: site URLs via yt-dlp, direct files via HTTP.", choices=("auto", "always", "never")
    )
    ytdlp_format: str = option(DEFAULT_YTDLP_FORMAT, "yt-dlp format selector (720p cap).")
    user_agent: str | None = option(
        None, "HTTP User-Agent (default: datakit's for HTTP, yt-dlp's own for yt-dlp)."
    )
    fsync: bool = option(True, "fsync each file before the rename that publishes it.")
    commit_every: int = option(32, "Items per committed part file.", min=1)

    def __post_init__(self) -> None:
        self.media_dir = ""  # set by setup(ctx): the workspace's media/
        # Counters of this process (worker threads add to them); not options, not in the config.
        self.bytes_downloaded = 0
        self.files_downloaded = 0
        # Sources of time and of backoff jitter (not options): tests replace them.
        self.clock = SystemClock()
        self.rng = random.Random()
        self.url_credentials: dict[str, str] = {}  # video id -> URL user-info, loaded by setup(ctx)

    def failure_rows(self, item: dict, exc: BaseException) -> Rows:
        # An unexpected exception in `process` (a bug): keep the URL with the row.
        rows = super().failure_rows(item, exc)
        row = rows[self.marker_table][0]
        row["url"] = item.get("url")
        userinfo = self.url_credentials.get(str(item.get("video_id")))
        row["error"] = redact_text(row["error"], userinfo)  # an exception may quote the real URL
        return rows

    # ----------------------------------------------------------------------------- contract
    def items_sql(self) -> str:
        # The runner adds the attempts made so far and skips rows whose retry_at is in the future.
        return """
            SELECT video_id, source AS url FROM _latest_sources
            WHERE source_kind = 'url' AND coalesce(status, 'ok') <> 'error'
        """

    def setup(self, ctx: WorkerContext) -> None:
        self.media_dir = str(ctx.media_dir)  # rows record absolute paths
        Path(self.media_dir).mkdir(parents=True, exist_ok=True)
        self.url_credentials = load_credentials(ctx.workspace)
        if self.use_ytdlp == "auto":
            needs_ytdlp("https://example.com/warm-up.mp4")  # import yt-dlp and compile its URL patterns once

    def process(self, item: dict) -> Rows:
        prev = int(item.get("attempts") or 0)
        # `url` is what rows show (no password); `fetch_url` carries the credentials, if any.
        url, userinfo = split_credentials(str(item["url"]))
        if userinfo is None and is_redacted(url):
            userinfo = self.url_credentials.get(str(item["video_id"]))
        fetch_url = with_credentials(url, userinfo) if userinfo else url
        stem = _safe_stem(str(item["video_id"]))
        method = self.route(url)
        row: dict[str, Any] = {"video_id": item["video_id"], "url": url, "method": method}
        if is_redacted(fetch_url):
            row.update(
                status="error",
                attempts=prev,
                error=f"no password for this URL in the workspace's {CREDENTIALS_PATH}: ingest it again",
            )
            return {self.marker_table: [row]}
        if method == "http" and (done := self._existing_file(stem)):
            # A killed run renamed the file but never wrote its row: the file is complete.
            row.update(
                status="ok", error=None, attempts=max(prev, 1), path=str(done), bytes=done.stat().st_size
            )
            return {self.marker_table: [row]}
        attempt = (
            (lambda: self._ytdlp_attempt(fetch_url, stem))
            if method == "yt-dlp"
            else (lambda: self._http_attempt(url, fetch_url, stem))
        )
        row.update(self._with_retries(attempt, prev))
        if row["error"]:
            row["error"] = redact_text(row["error"], userinfo)
        if row["status"] == "ok":
            with _counter_lock:
                self.bytes_downloaded += row["bytes"] or 0
                self.files_downloaded += 1
        elif row["status"] == "error":
            for leftover in (self._part(stem), self._part_meta(stem)):
                leftover.unlink(missing_ok=True)
        return {self.marker_table: [row]}

    def route(self, url: str) -> str:
        """'yt-dlp' or 'http' for this URL, following `use_ytdlp`."""
        if self.use_ytdlp == "never":
            return "http"
        if self.use_ytdlp == "always":
            return "yt-dlp"
        return "yt-dlp" if needs_ytdlp(url) else "http"

    # ----------------------------------------------------------------------------- retries
    def _with_retries(self, attempt, prev: int) -> dict:
        """Run attempts until success, a permanent failure, or this run's budget is spent."""
        # Our own loop, not urllib3's Retry: an attempt is an HTTP range request or a yt-dlp run, the
        # budget spans runs (attempts are stored per row), a long Retry-After defers the row to a later
        # run, and Retry sleeps with time.sleep, jitters with `random` and dates Retry-After by
        # time.time(): the injected clock and rng that make the tests exact would be lost.
        budget = min(self.max_retries, self.max_attempts - prev)
        if budget <= 0:
            return {
                "status": "error",
                "error": f"gave up after {prev} attempts (max_attempts {self.max_attempts})",
                "attempts": prev,
            }
        made, last, deferred = 0, None, False
        while made < budget:
            made += 1
            try:
                result = attempt()
                return {
                    "status": "ok",
                    "error": None,
                    "attempts": prev + made,
                    "retry_after_s": None,
                    **result,
                }
            except _Failure as failure:
                last = failure
            if not last.transient:
                return {
                    "status": "error",
                    "error": last.message,
                    "attempts": prev + made,
                    "http_status": last.http_status,
                    "retry_after_s": None,
                }
            if made >= budget:
                break
            if last.retry_after is not None and last.retry_after > self.max_wait_s:
                deferred = True  # the server wants a long pause: leave it to a later run
                break
            self.clock.sleep(last.retry_after if last.retry_after is not None else self._backoff(made))
        assert last is not None
        total = prev + made
        message = f"{last.message} after {made} attempt{'s' if made > 1 else ''}"
        if prev:
            message += f" ({total} over all runs)"
        if deferred:
            message += (
                f"; server asked to retry after {last.retry_after:.0f} s (> max_wait_s {self.max_wait_s:g})"
            )
        status = "retry"
        if total >= self.max_attempts:
            status, message = "error", f"{message}; giving up (max_attempts {self.max_attempts})"
        return {
            "status": status,
            "error": message,
            "attempts": total,
            "http_status": last.http_status,
            "retry_after_s": last.retry_after,
            "retry_at": self.clock.time() + last.retry_after if deferred and status == "retry" else None,
        }

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: base * 2^(attempt-1), capped, times 0.5..1."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)) * self.rng.uniform(0.5, 1.0)

    # ----------------------------------------------------------------------------- HTTP
    def _part(self, stem: str) -> Path:
        return Path(self.media_dir) / f"{stem}.part"

    def _part_meta(self, stem: str) -> Path:
        return Path(self.media_dir) / f"{stem}.part.json"

    def _existing_file(self, stem: str) -> Path | None:
        for ext in (*VIDEO_EXTS, FALLBACK_EXT):
            p = Path(self.media_dir) / f"{stem}.{ext}"
            if p.is_file():
                return p
        return None

    def _http_attempt(self, url: str, fetch_url: str, stem: str) -> dict:
        """One GET of `fetch_url` (with credentials); the part's metadata records `url` (without)."""
        part, meta = self._part(stem), self._part_meta(stem)
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": self.user_agent or DEFAULT_USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            saved = _read_json(meta)
            if saved.get("url", url) != url:  # a part of some other URL: start over
                part.unlink(missing_ok=True)
                offset = 0
            else:
                headers["Range"] = f"bytes={offset}-"
                # If-Range: a server whose file changed since the part was written sends it whole (200).
                etag = saved.get("etag")
                validator = etag if etag and not etag.startswith("W/") else saved.get("last_modified")
                if validator:
                    headers["If-Range"] = validator
        session = _session()
        session.max_redirects = self.max_redirects
        try:
            response = session.get(
                fetch_url, headers=headers, stream=True, timeout=(self.timeout_s, self.timeout_s)
            )
        except requests.exceptions.TooManyRedirects:
            raise _Failure(f"too many redirects (more than {self.max_redirects})", transient=False) from None
        except requests.exceptions.ConnectTimeout:
            raise _Failure(
                f"connect timeout: no connection within {self.timeout_s:g} s", transient=True
            ) from None
        except requests.exceptions.ReadTimeout:
            raise _Failure(f"no response within {self.timeout_s:g} s", transient=True) from None
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise _Failure(f"invalid URL: {_printable(str(exc), 200)}", transient=False) from None
        except requests.exceptions.SSLError as exc:
            raise _Failure(f"TLS error: {_short_reason(exc)}", transient=False) from None
        except requests.exceptions.RequestException as exc:
            raise _connection_failure(exc) from None
        with response:
            return self._http_body(response, url, part, meta, offset)

    def _http_body(self, r: requests.Response, url: str, part: Path, meta: Path, offset: int) -> dict:
        status = r.status_code
        reason = _reason(r)
        if status == 416 and offset:  # asked for bytes past the end: the part may already be whole
            total = _content_range(r.headers.get("Content-Range", ""))[2]
            if total == offset:
                return self._publish(part, meta, offset, r, status)
            part.unlink(missing_ok=True)
            raise _Failure(
                f"HTTP 416 for a resume at byte {offset}; restarting", transient=True, http_status=status
            )
        if status in (408, 429) or status >= 500:
            retry_after = None
            if status in (429, 503):
                retry_after = _retry_after(r.headers.get("Retry-After"), self.clock.time())
            raise _Failure(
                f"HTTP {status} {reason}", transient=True, http_status=status, retry_after=retry_after
            )
        if status >= 400:
            raise _Failure(f"HTTP {status} {reason}", transient=False, http_status=status)
        if status not in (200, 206):
            raise _Failure(f"unexpected HTTP {status} {reason}", transient=False, http_status=status)
        if _content_type(r) == "text/html":
            raise _Failure(
                "not a video: the server sent an HTML page (a site URL? try use_ytdlp='always')",
                transient=False,
                http_status=status,
            )
        # We ask for identity; a server that compresses anyway is decoded while streaming.
        encoding = r.headers.get("Content-Encoding", "").strip().lower()
        encoding = "" if encoding == "identity" else encoding
        if encoding and any(c.strip() not in r.raw.CONTENT_DECODERS for c in encoding.split(",")):
            raise _Failure(
                f"unsupported Content-Encoding {_printable(encoding, 40)!r} (asked for identity)",
                transient=False,
                http_status=status,
            )

        length = _int_or_none(r.headers.get("Content-Length"))  # bytes on the wire (compressed, if so)
        if status == 206:
            if encoding:  # a range of the compressed form cannot extend a decoded part
                part.unlink(missing_ok=True)
                raise _Failure(
                    f"{encoding}-compressed reply to a resume at byte {offset}; restarting",
                    transient=True,
                    http_status=status,
                )
            start, _, total = _content_range(r.headers.get("Content-Range", ""))
            if start != offset:  # not the range we asked for: drop the part, restart next attempt
                part.unlink(missing_ok=True)
                raise _Failure(
                    f"bad Content-Range {_printable(r.headers.get('Content-Range', ''), 60)!r} "
                    f"for a resume at byte {offset}",
                    transient=True,
                    http_status=status,
                )
            expected = total if total is not None else (offset + length if length is not None else None)
            mode = "ab"
        else:  # 200: the whole file (a server without Range support, or If-Range saw a change)
            offset, mode = 0, "wb"
            expected = None if encoding else length  # the decoded size is not announced
            _write_json(
                meta,
                {"url": url, "etag": r.headers.get("ETag"), "last_modified": r.headers.get("Last-Modified")},
            )
        if expected is not None and expected > self.max_bytes:
            raise _Failure(
                f"too large: Content-Length {_fmt_bytes(expected)} > max_bytes {_fmt_bytes(self.max_bytes)}",
                transient=False,
                http_status=status,
            )

        got = offset
        with open(part, mode) as fh:
            try:
                # Decoding buffers a whole chunk, so only a compressed body is decoded: a plain
                # one keeps the bytes that arrived before a dropped connection (for the resume).
                for chunk in r.raw.stream(_CHUNK, decode_content=bool(encoding)):
                    got += len(chunk)
                    if got > self.max_bytes:
                        raise _Failure(
                            f"too large: body passed max_bytes {_fmt_bytes(self.max_bytes)}",
                            transient=False,
                            http_status=status,
                        )
                    fh.write(chunk)
            except urllib3.exceptions.ReadTimeoutError:
                raise _Failure(
                    f"connection stalled: no data for {self.timeout_s:g} s (after {got} bytes)",
                    transient=True,
                    http_status=status,
                ) from None
            except urllib3.exceptions.DecodeError:
                raise _Failure(
                    f"corrupt {encoding}-compressed body: it does not decode",
                    transient=False,
                    http_status=status,
                ) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if expected is not None and got < expected:
                    raise _Failure(
                        f"truncated body: got {got} of {expected} bytes", transient=True, http_status=status
                    ) from None
                if encoding and length is not None and r.raw.tell() < length:
                    raise _Failure(
                        f"truncated body: got {r.raw.tell()} of {length} {encoding}-compressed bytes",
                        transient=True,
                        http_status=status,
                    ) from None
                raise _Failure(
                    f"connection broken: {_broken_reason(exc)}", transient=True, http_status=status
                ) from None
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if expected is not None and got != expected:
            if got > expected:  # the server sent more than it announced: do not trust the part
                part.unlink(missing_ok=True)
            raise _Failure(
                f"truncated body: got {got} of {expected} bytes", transient=True, http_status=status
            )
        return self._publish(part, meta, got, r, status)

    def _publish(self, part: Path, meta: Path, size: int, r: requests.Response, status: int) -> dict:
        with open(part, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
        ext = _sniff_ext(head)
        if ext is None and (kind := _document_kind(head)):
            ctype = _content_type(r)
            label = f"labelled {_printable(ctype, 60)}" if ctype else "without a Content-Type"
            message = f"not a video: the server sent {kind}, {label}"
            raise _Failure(message, transient=False, http_status=status)
        ext = ext or CONTENT_TYPE_EXTS.get(_content_type(r)) or _url_ext(r.url) or FALLBACK_EXT
        final = part.with_name(f"{part.stem}.{ext}")
        os.replace(part, final)
        meta.unlink(missing_ok=True)
        return {"path": str(final), "bytes": size, "http_status": status}

    # ----------------------------------------------------------------------------- yt-dlp
    def _ytdlp_attempt(self, url: str, stem: str) -> dict:
        import shutil

        import yt_dlp

        media = Path(self.media_dir)
        fmt = self.ytdlp_format
        if fmt == DEFAULT_YTDLP_FORMAT and shutil.which("ffmpeg") is None:
            fmt = YTDLP_FORMAT_NO_FFMPEG
        opts: dict[str, Any] = {
            "outtmpl": {"default": f"{stem}.%(ext)s"},
            "paths": {"home": str(media), "temp": str(media)},
            "format": fmt,
            "merge_output_format": "mp4",
            "noplaylist": True,
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": _QuietLogger(),
            "socket_timeout": self.timeout_s,
            "retries": 2,  # yt-dlp's own retries of a file/fragment; our loop retries the whole URL
            "fragment_retries": 3,
            "extractor_retries": 1,
            "continuedl": True,  # resume its own .part files
            "max_filesize": self.max_bytes,
            "restrictfilenames": True,
            "cachedir": False,
            "color": {"stdout": "no_color", "stderr": "no_color"},
        }
        if self.user_agent:
            opts["http_headers"] = {"User-Agent": self.user_agent}
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:
                info = ydl.extract_info(url, download=True)
        except yt_dlp.utils.DownloadError as exc:
            message = _clean_ytdlp_message(str(exc))
            code = _ytdlp_http_status(message)
            raise _Failure(
                f"yt-dlp: {message}", transient=_ytdlp_transient(message, code), http_status=code
            ) from None
        path = _ytdlp_path(info or {})
        if path is None or not path.is_file():
            raise _Failure("yt-dlp finished without a file (larger than max_bytes?)", transient=False)
        return {"path": str(path.absolute()), "bytes": path.stat().st_size, "http_status": None}


# --------------------------------------------------------------------------------- routing
@lru_cache(maxsize=1)
def _site_matchers() -> tuple[tuple[re.Pattern, ...], tuple]:
    """yt-dlp's site extractors (all but Generic) as (URL patterns, extractors with own matching).

    An extractor that inherits `suitable` and `_match_valid_url` from the root class (yt-dlp's
    InfoExtractor, or LazyLoadExtractor when its lazy extractors are built) matches by its
    `_VALID_URL` alone: those patterns are matched directly, the same answer as calling every
    extractor's `suitable`, and about 4x faster (~1 ms per URL instead of ~4 ms).
    """
    from yt_dlp.extractor import gen_extractor_classes

    def inherited(ie: type, attr: str) -> bool:
        return sum(attr in cls.__dict__ for cls in ie.__mro__) == 1

    patterns: list[re.Pattern] = []
    custom = []
    for ie in gen_extractor_classes():
        if ie.ie_key() == "Generic":
            continue
        if inherited(ie, "suitable") and inherited(ie, "_match_valid_url"):
            if ie._VALID_URL:
                valid = ie._VALID_URL
                patterns.extend(re.compile(v) for v in ([valid] if isinstance(valid, str) else valid))
        else:
            custom.append(ie)
    return tuple(patterns), tuple(custom)


def needs_ytdlp(url: str) -> bool:
    """True for URLs that a site extractor of yt-dlp claims, and for HLS/DASH manifests.

    Direct file links (only the Generic extractor matches them) are fetched over plain HTTP.
    About 1 ms per URL once the patterns are compiled (the first call takes ~1 s).
    """
    if urlsplit(url).path.lower().endswith(MANIFEST_SUFFIXES):
        return True
    patterns, custom = _site_matchers()
    return any(p.match(url) for p in patterns) or any(ie.suitable(url) for ie in custom)


# --------------------------------------------------------------------------------- helpers
def _session() -> requests.Session:
    session = getattr(_thread, "session", None)
    if session is None:
        session = _thread.session = requests.Session()
    return session


def _safe_stem(video_id: str) -> str:
    """A file name stem from a video id: ids are hex already, but never trust a name."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", video_id)[:100]
    return stem or "_"


def _sniff_ext(head: bytes) -> str | None:
    """Container from the first bytes of a file."""
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "mov"
        if brand.startswith(b"M4V"):
            return "m4v"
        if brand.startswith(b"3g"):
            return "3gp"
        return "mp4"
    if box in (b"moov", b"mdat", b"wide", b"free", b"skip"):  # QuickTime without ftyp
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML
        return "webm" if b"webm" in head[:64] else "mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"OggS":
        return "ogv"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpg"
    if head[:4] == b"\x30\x26\xb2\x75":  # ASF
        return "wmv"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:  # MPEG-TS sync bytes
        return "ts"
    return None


def _url_ext(url: str) -> str | None:
    suffix = Path(urlsplit(url).path).suffix.lower().lstrip(".")
    return suffix if suffix in VIDEO_EXTS else None


def _content_type(r: requests.Response) -> str:
    return r.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 199, 1000); 'bytes */1000' -> (None, None, 1000)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None, None
    start, end, total = m.groups()
    return _int_or_none(start), _int_or_none(end), _int_or_none(total)


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from `now` (epoch seconds): delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _short_reason(exc: BaseException) -> str:
    """The useful tail of a requests/urllib3 error ('[Errno 111] Connection refused')."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).strip()
    m = re.search(r"Caused by \w+\('?(.*?)'?\)\)?$", text)
    return _printable(m.group(1) if m else text, 200)


def _printable(text: str, limit: int) -> str:
    """Text safe for an error column: bytes literals and control characters out, at most `limit`."""
    text = re.sub(r"""\bb(['"]).*?\1""", "<bytes>", text)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it wraps (requests -> urllib3 -> http.client), outermost first."""
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e in found:
            continue
        found.append(e)
        todo.extend(a for a in e.args if isinstance(a, BaseException))
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)
    return found


def _connection_failure(exc: BaseException) -> _Failure:
    """A request that got no HTTP response. What a non-HTTP server sent is never quoted."""
    for cause in _causes(exc):
        if isinstance(cause, http.client.RemoteDisconnected):
            return _Failure("connection closed by the server before any response", transient=True)
        if isinstance(cause, http.client.LineTooLong) and "header" in str(cause):
            return _Failure("invalid HTTP response: a header line over 64 KiB", transient=False)
        if isinstance(cause, http.client.BadStatusLine | http.client.LineTooLong):
            return _Failure(
                "not an HTTP server: its reply does not start with an HTTP status line", transient=False
            )
        if isinstance(cause, http.client.HTTPException):  # http.client's own words, e.g. too many headers
            return _Failure(f"invalid HTTP response: {_printable(str(cause), 100)}", transient=False)
    return _Failure(f"connection failed: {_short_reason(exc)}", transient=True)


def _broken_reason(exc: BaseException) -> str:
    """Why a body stopped arriving, in a few words."""
    for cause in _causes(exc):
        if isinstance(cause, urllib3.exceptions.InvalidChunkLength):
            return "invalid chunked transfer encoding"
        if isinstance(cause, http.client.IncompleteRead | urllib3.exceptions.IncompleteRead):
            return "the server closed the connection early"
    return _short_reason(exc)


def _reason(r: requests.Response) -> str:
    """The server's reason phrase when it is short plain text, else the standard one."""
    reason = (r.reason or "").strip()
    if reason and len(reason) <= 60 and reason.isascii() and reason.isprintable():
        return reason
    return _phrase(r.status_code)


_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<meta", b"<title", b"<!--")


def _document_kind(head: bytes) -> str | None:
    """What the head of a body is when it is a document rather than media: 'an HTML page', ..."""
    if not head:
        return "an empty body"
    if head.startswith(b"YUV4MPEG2"):  # raw video with a text header
        return None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<"):
        return "an HTML page" if text.startswith(_HTML_STARTS) or b"<html" in text else "an XML document"
    if not _is_text(head):
        return None
    return "a JSON document" if text[:1] in (b"{", b"[") else "text"


def _is_text(head: bytes) -> bool:
    """UTF-8 without control characters (a character cut off at the end is allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class _QuietLogger:
    """yt-dlp logger: errors come back as DownloadError; nothing is printed."""

    def debug(self, msg: str) -> None:
        pass

    info = warning = error = debug


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# yt-dlp messages that will not change on a retry.
_YTDLP_PERMANENT = re.compile(
    r"unsupported url|video unavailable|private video|not available|has been removed|does not exist|"
    r"copyright|members.only|confirm your age|requested format is not available|no video formats|"
    r"is not a valid url|account .*terminated",
    re.IGNORECASE,
)


def _clean_ytdlp_message(text: str) -> str:
    text = _ANSI.sub("", text).strip()
    return re.sub(r"^ERROR:\s*", "", text)[:500]


def _ytdlp_http_status(message: str) -> int | None:
    m = re.search(r"HTTP Error (\d{3})", message)
    return int(m.group(1)) if m else None


def _ytdlp_transient(message: str, code: int | None) -> bool:
    """Site errors: 5xx, 408, 429 and 403 (often throttling) and unknown errors are retried."""
    if code is not None:
        return code >= 500 or code in (403, 408, 429)
    return not _YTDLP_PERMANENT.search(message)


def _ytdlp_path(info: dict) -> Path | None:
    for d in reversed(info.get("requested_downloads") or []):
        if d.get("filepath"):
            return Path(d["filepath"])
    for key in ("filepath", "_filename"):
        if info.get(key):
            return Path(info[key])
    return None
