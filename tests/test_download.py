"""Download stage against local servers on 127.0.0.1 (no other network is touched).

Time never passes for real: the stage's clock and jitter source are fakes that record every wait,
so backoff and Retry-After are checked exactly. Only the stalled-body test waits, for a socket
timeout of 0.5 s.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import json
import socket
import stat
import sys
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from datakit.credentials import CREDENTIALS_PATH
from datakit.executors import plan, run_stage
from datakit.ids import url_video_id
from datakit.ingest import ingest
from datakit.stage import OptionError, WorkerContext
from datakit.stages import download as dl
from datakit.stages.download import DownloadStage, needs_ytdlp
from datakit.workspace import Workspace

pytestmark = pytest.mark.timeout(60)

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>log in to watch</body></html>"
AUTH = "Basic " + base64.b64encode(b"user:s3cret pass").decode()  # what /private.mp4 accepts


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    from demo.sample_videos import SampleSpec, make_sample

    truth = make_sample(SampleSpec("dl", 160, 120, 12, scene_frames=[12, 12]), tmp_path_factory.mktemp("v"))
    return Path(truth.path).read_bytes()


class FakeClock:
    """Time that moves only when the stage sleeps; every requested wait is recorded."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FixedJitter:
    """A random source whose uniform(a, b) is always a + (b - a) * fraction."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, video: bytes):
        super().__init__(("127.0.0.1", 0), Handler)
        self.video = video
        self.hits: Counter[str] = Counter()
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of every ranged request
        self.sent: Counter[str] = Counter()  # body bytes sent per path
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends the stalled response at teardown

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up early on purpose here
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        s = self.server
        with s.lock:
            s.hits[path] += 1
            hit = s.hits[path]
            if self.headers.get("Range"):
                s.ranges.append((path, self.headers["Range"]))
        video = s.video
        if path in ("/good.mp4", "/nested/clip.webm") or path.endswith("passwd"):
            self.send_video(video, ranges=True)
        elif path == "/etag.mp4":  # honours Range only while If-Range names its current ETag
            if self.headers.get("If-Range", '"v2"') != '"v2"':
                del self.headers["Range"]
            self.send_video(video, ranges=True, headers={"ETag": '"v2"'})
        elif path == "/norange.mp4":
            self.send_video(video, ranges=False)
        elif path == "/noext":
            self.send_video(video, ranges=False, ctype="application/octet-stream")
        elif path == "/gzip.mp4":  # compresses whatever Accept-Encoding says, and ignores Range
            self.send_body(gzip.compress(video), "video/mp4", headers={"Content-Encoding": "gzip"})
        elif path == "/deflate.mp4":
            self.send_body(zlib.compress(video), "video/mp4", headers={"Content-Encoding": "deflate"})
        elif path == "/compress.mp4":  # an encoding nobody decodes any more
            self.send_body(video, "video/mp4", headers={"Content-Encoding": "compress"})
        elif path == "/fake.mp4":
            self.send_body(HTML_PAGE, "video/mp4")
        elif path == "/fake.json":
            self.send_body(b'{"error": "link expired"}\n', "application/octet-stream")
        elif path == "/fake.txt":
            self.send_body(b"Access denied for this region.\n", "")
        elif path == "/private.mp4":
            if self.headers.get("Authorization") == AUTH:
                self.send_video(video, ranges=True)
            else:
                self.send_status(401, {"WWW-Authenticate": 'Basic realm="videos"'})
        elif path == "/fail500":
            self.send_status(500)
        elif path == "/garbled500":  # a reason phrase of control characters and noise
            self.send_status(500, message="\x01\x02\x7f" + "#" * 200)
        elif path.startswith("/flaky/"):
            self.send_status(500) if hit == 1 else self.send_video(video)
        elif path.startswith("/ratelimit/"):
            self.send_status(429, {"Retry-After": "1"}) if hit == 1 else self.send_video(video)
        elif path == "/ratelimit-long":
            self.send_status(429, {"Retry-After": "120"})
        elif path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(video)))
            self.end_headers()
            self.wfile.write(video[: len(video) // 2])
            self.close_connection = True
        elif path == "/stall":  # 1000 bytes, then silence until the test ends
            self.send_response(200)
            self.send_header("Content-Length", str(len(video)))
            self.end_headers()
            self.wfile.write(video[:1000])
            self.wfile.flush()
            s.release.wait(30)
            self.close_connection = True
        elif path == "/loop":
            self.send_status(302, {"Location": "/loop"})
        elif path == "/redirect":
            self.send_status(302, {"Location": "/good.mp4"})
        elif path == "/huge":  # announces 3 GiB; the client must give up before the body
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(3 * 1024**3))
            self.end_headers()
            self.close_connection = True
        elif path == "/endless":  # chunked, no Content-Length, far past max_bytes
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(160):  # 10 MiB at most
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
        elif path == "/page":
            self.send_body(b"<html>a video page</html>", "text/html; charset=utf-8")
        else:
            self.send_status(404)

    def send_status(self, code: int, headers: dict | None = None, message: str | None = None) -> None:
        body = f"{code}\n".encode()
        self.send_response(code, message)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_body(self, body: bytes, ctype: str, code: int = 200, headers: dict | None = None) -> None:
        self.send_response(code)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        with self.server.lock:
            self.server.sent[urlsplit(self.path).path] += len(body)

    def send_video(self, video: bytes, ranges: bool = True, ctype: str = "video/mp4", headers=None) -> None:
        rng = self.headers.get("Range", "")
        if ranges and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            extra = {
                "Content-Range": f"bytes {start}-{len(video) - 1}/{len(video)}",
                "Accept-Ranges": "bytes",
            }
            self.send_body(video[start:], ctype, 206, extra | (headers or {}))
        else:
            self.send_body(video, ctype, headers=headers)


@pytest.fixture
def server(video):
    srv = Server(video)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def banner_port():
    """Start a TCP server that answers every connection with `banner` (an SSH or SMTP greeting)."""
    listeners: list[socket.socket] = []

    def start(banner: bytes) -> int:
        sock = socket.create_server(("127.0.0.1", 0))
        listeners.append(sock)

        def serve() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:  # closed at teardown
                    return
                with conn:
                    conn.sendall(banner)
                    conn.recv(65536)

        threading.Thread(target=serve, daemon=True).start()
        return sock.getsockname()[1]

    yield start
    for sock in listeners:
        sock.close()


def make_stage(tmp_path: Path, **kw) -> DownloadStage:
    """A stage set up on `tmp_path` as its workspace, with a fake clock and no jitter."""
    opts = dict(timeout_s=2.0, max_retries=3, backoff_base_s=0.05, backoff_cap_s=0.2, use_ytdlp="never")
    stage = DownloadStage(**(opts | kw))
    stage.setup(WorkerContext.for_workspace(tmp_path, "download"))
    stage.clock = FakeClock()
    stage.rng = FixedJitter(1.0)
    return stage


def fetch(stage: DownloadStage, url: str, attempts: int = 0) -> dict:
    rows = stage.process({"video_id": url_video_id(url), "url": url, "attempts": attempts})
    (row,) = rows["downloads"]
    return row


def media_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "media").iterdir())


# ------------------------------------------------------------------------------------ HTTP
def test_good_file(server, video, tmp_path):
    stage = make_stage(tmp_path)
    url = server.url("/good.mp4")
    row = fetch(stage, url)
    assert (row["status"], row["error"], row["attempts"], row["method"], row["http_status"]) == (
        "ok",
        None,
        1,
        "http",
        200,
    )
    assert row["path"] == str(tmp_path / "media" / f"{url_video_id(url)}.mp4")
    assert Path(row["path"]).read_bytes() == video and row["bytes"] == len(video)
    assert media_files(tmp_path) == [f"{url_video_id(url)}.mp4"]  # no .part left
    assert stage.bytes_downloaded == len(video) and stage.files_downloaded == 1


def test_extension_from_magic_not_url(server, tmp_path):
    stage = make_stage(tmp_path)
    for path in ("/noext", "/nested/clip.webm"):  # an mp4 served as octet-stream, and as '.webm'
        row = fetch(stage, server.url(path))
        assert row["status"] == "ok" and row["path"].endswith(".mp4")


def test_500_always_becomes_retry(server, tmp_path):
    row = fetch(make_stage(tmp_path), server.url("/fail500"))
    assert row["status"] == "retry" and row["attempts"] == 3 and row["http_status"] == 500
    assert row["error"] == "HTTP 500 Internal Server Error after 3 attempts"
    assert server.hits["/fail500"] == 3


@pytest.mark.parametrize(("jitter", "waits"), [(1.0, [0.5, 1.0, 1.5]), (0.0, [0.25, 0.5, 0.75])])
def test_backoff_doubles_with_jitter_up_to_the_cap(server, tmp_path, jitter, waits):
    stage = make_stage(tmp_path, max_retries=4, backoff_base_s=0.5, backoff_cap_s=1.5)
    stage.rng = FixedJitter(jitter)  # the factor runs from 0.5 (fraction 0) to 1 (fraction 1)
    row = fetch(stage, server.url("/fail500"))
    assert row["status"] == "retry" and row["attempts"] == 4
    assert stage.clock.sleeps == waits  # 0.5, 1, 2 capped at 1.5; times the jitter factor


def test_flaky_500_then_ok(server, video, tmp_path):
    stage = make_stage(tmp_path)
    row = fetch(stage, server.url("/flaky/a.mp4"))
    assert row["status"] == "ok" and row["attempts"] == 2
    assert Path(row["path"]).read_bytes() == video
    assert stage.clock.sleeps == [0.05]  # one backoff wait: backoff_base_s


def test_429_retry_after_is_honoured(server, tmp_path):
    stage = make_stage(tmp_path)
    row = fetch(stage, server.url("/ratelimit/a.mp4"))
    assert row["status"] == "ok" and row["attempts"] == 2
    assert stage.clock.sleeps == [1.0]  # the server's Retry-After, not the 0.05 s backoff


def test_long_retry_after_defers_to_a_later_run(server, tmp_path):
    stage = make_stage(tmp_path, max_wait_s=5)
    row = fetch(stage, server.url("/ratelimit-long"))
    assert stage.clock.sleeps == []  # did not sleep 120 s, nor retry at once
    assert row["status"] == "retry" and row["retry_after_s"] == 120 and row["http_status"] == 429
    assert row["attempts"] == 1 and "Retry-After" not in row["error"] and "retry after 120 s" in row["error"]
    assert row["retry_at"] == stage.clock.now + 120


def test_a_rerun_skips_rows_until_their_retry_at(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.write(
        "sources",
        [
            {"video_id": v, "source": f"http://127.0.0.1:9/{v}.mp4", "source_kind": "url", "status": "ok"}
            for v in "ab"
        ],
    )
    ws.write(
        "downloads",
        [
            {"video_id": "a", "status": "retry", "attempts": 1, "retry_at": time.time() + 3600},
            {"video_id": "b", "status": "retry", "attempts": 1, "retry_at": time.time() - 1},
        ],
    )
    assert [r["video_id"] for r in plan(ws, make_stage(tmp_path))] == ["b"]


def test_retry_after_forms():
    now = 1_700_000_000.0
    assert dl._retry_after("7", now) == 7.0
    assert dl._retry_after(email.utils.formatdate(now + 60, usegmt=True), now) == 60.0  # an HTTP date
    assert dl._retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0  # in the past
    assert dl._retry_after("soon", now) is None and dl._retry_after(None, now) is None


def test_truncated_body(server, video, tmp_path):
    row = fetch(make_stage(tmp_path, max_retries=2), server.url("/truncated"))
    assert row["status"] == "retry"
    assert row["error"] == f"truncated body: got {len(video) // 2} of {len(video)} bytes after 2 attempts"
    assert not any(n.endswith(".mp4") for n in media_files(tmp_path))  # nothing published


def test_stalled_body(server, tmp_path):
    # A real socket timeout: the server sends 1000 bytes, then nothing until the test ends.
    row = fetch(make_stage(tmp_path, timeout_s=0.5, max_retries=1), server.url("/stall"))
    assert row["status"] == "retry"
    assert row["error"].startswith("connection stalled: no data for 0.5 s (after ")
    assert row["error"].endswith(" bytes) after 1 attempt")
    assert not any(n.endswith(".mp4") for n in media_files(tmp_path))


def test_redirect_loop(server, tmp_path):
    row = fetch(make_stage(tmp_path, max_redirects=5), server.url("/loop"))
    assert row["status"] == "error" and row["error"] == "too many redirects (more than 5)"
    assert row["attempts"] == 1 and server.hits["/loop"] <= 6


def test_redirect_to_file(server, video, tmp_path):
    row = fetch(make_stage(tmp_path), server.url("/redirect"))
    assert row["status"] == "ok" and Path(row["path"]).read_bytes() == video


def test_too_large_by_content_length(server, tmp_path):
    row = fetch(make_stage(tmp_path), server.url("/huge"))
    assert row["status"] == "error" and row["attempts"] == 1
    assert row["error"] == "too large: Content-Length 3.0 GiB > max_bytes 2.0 GiB"
    assert media_files(tmp_path) == []


def test_too_large_while_streaming(server, tmp_path):
    row = fetch(make_stage(tmp_path, max_bytes=1024**2), server.url("/endless"))
    assert row["status"] == "error" and row["error"] == "too large: body passed max_bytes 1.0 MiB"
    assert media_files(tmp_path) == []  # the partial file is gone


def test_404_is_permanent(server, tmp_path):
    row = fetch(make_stage(tmp_path), server.url("/missing.mp4"))
    assert (row["status"], row["error"], row["attempts"], row["http_status"]) == (
        "error",
        "HTTP 404 Not Found",
        1,
        404,
    )
    assert server.hits["/missing.mp4"] == 1


def test_html_page_is_not_a_video(server, tmp_path):
    row = fetch(make_stage(tmp_path), server.url("/page"))
    assert row["status"] == "error" and row["error"].startswith("not a video")


def test_connection_refused_is_transient(tmp_path):
    row = fetch(make_stage(tmp_path, max_retries=1, timeout_s=1), "http://127.0.0.1:1/x.mp4")
    assert row["status"] == "retry" and row["error"].startswith("connection failed: ")
    assert "Connection refused" in row["error"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/fake.mp4", "not a video: the server sent an HTML page, labelled video/mp4"),
        ("/fake.json", "not a video: the server sent a JSON document, labelled application/octet-stream"),
        ("/fake.txt", "not a video: the server sent text, without a Content-Type"),
    ],
)
def test_a_document_is_refused_whatever_its_content_type(server, tmp_path, path, message):
    row = fetch(make_stage(tmp_path), server.url(path))
    assert (row["status"], row["error"], row["attempts"]) == ("error", message, 1)
    assert media_files(tmp_path) == []  # neither published nor left as a part


@pytest.mark.parametrize("path", ["/gzip.mp4", "/deflate.mp4"])
def test_a_compressed_body_is_saved_decoded(server, video, tmp_path, path):
    stage = make_stage(tmp_path)
    url = server.url(path)
    row = fetch(stage, url)
    assert row["status"] == "ok" and row["path"].endswith(".mp4")
    assert Path(row["path"]).read_bytes() == video and row["bytes"] == len(video)
    # A part left by a killed run: the server answers the Range with the whole compressed file.
    Path(row["path"]).unlink()
    stage._part(url_video_id(url)).write_bytes(video[:1000])
    stage._part_meta(url_video_id(url)).write_text(json.dumps({"url": url}))
    row = fetch(stage, url)
    assert row["status"] == "ok" and Path(row["path"]).read_bytes() == video
    assert server.ranges == [(path, "bytes=1000-")]


def test_an_encoding_that_cannot_be_decoded_is_an_error(server, tmp_path):
    row = fetch(make_stage(tmp_path), server.url("/compress.mp4"))
    assert row["status"] == "error"
    assert row["error"] == "unsupported Content-Encoding 'compress' (asked for identity)"
    assert media_files(tmp_path) == []


@pytest.mark.parametrize(
    "banner",
    [
        b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
        b"220 mail.example.com ESMTP Postfix\r\n",
        b"\x15\x03\x01\x00\x02\x02\x46\xff\xfe\x00\x81binary\r\n",  # a TLS alert and noise
    ],
)
def test_a_port_that_does_not_speak_http_gets_a_readable_error(banner_port, tmp_path, banner):
    url = f"http://127.0.0.1:{banner_port(banner)}/video.mp4"
    row = fetch(make_stage(tmp_path), url)
    assert row["status"] == "error" and row["attempts"] == 1  # retrying will not change the server
    assert row["error"] == "not an HTTP server: its reply does not start with an HTTP status line"


@pytest.mark.parametrize(
    ("reply", "status", "error"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\x00\x01\xffzz\r\nabc",
            "retry",
            "connection broken: invalid chunked transfer encoding after 1 attempt",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Encoding: gzip\r\n\r\n"
            b"\x1f\x8b\x00\x00garbage!",
            "error",
            "corrupt gzip-compressed body: it does not decode",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Junk: " + b"\xfe" * 70_000 + b"\r\n\r\n",
            "error",
            "invalid HTTP response: a header line over 64 KiB",
        ),
    ],
)
def test_malformed_http_replies_get_short_errors(banner_port, tmp_path, reply, status, error):
    row = fetch(make_stage(tmp_path, max_retries=1), f"http://127.0.0.1:{banner_port(reply)}/video.mp4")
    assert (row["status"], row["error"]) == (status, error)
    assert not any(n.endswith(".mp4") for n in media_files(tmp_path))  # nothing published


def test_a_garbled_reason_phrase_is_not_copied(server, tmp_path):
    row = fetch(make_stage(tmp_path, max_retries=1), server.url("/garbled500"))
    assert row["error"] == "HTTP 500 Internal Server Error after 1 attempt"


def test_resume_with_range(server, video, tmp_path):
    stage = make_stage(tmp_path)
    url = server.url("/good.mp4")
    half = len(video) // 2
    part = tmp_path / "media" / f"{url_video_id(url)}.part"
    part.write_bytes(video[:half])  # what a killed run left behind
    row = fetch(stage, url)
    assert row["status"] == "ok" and Path(row["path"]).read_bytes() == video
    assert server.ranges == [("/good.mp4", f"bytes={half}-")]
    assert server.sent["/good.mp4"] == len(video) - half  # only the rest was sent
    assert not part.exists()


def test_resume_restarts_when_server_ignores_range(server, video, tmp_path):
    url = server.url("/norange.mp4")
    part = tmp_path / "media" / f"{url_video_id(url)}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"garbage" * 100)
    row = fetch(make_stage(tmp_path), url)
    assert row["status"] == "ok" and Path(row["path"]).read_bytes() == video


def test_resume_sends_if_range_and_restarts_on_a_changed_file(server, video, tmp_path):
    url = server.url("/etag.mp4")
    stage = make_stage(tmp_path)
    part, meta = stage._part(url_video_id(url)), stage._part_meta(url_video_id(url))
    part.write_bytes(b"old version" * 50)  # a part of the file as it was, with its validator
    meta.write_text(json.dumps({"url": url, "etag": '"v1"'}))
    row = fetch(stage, url)
    assert row["status"] == "ok" and Path(row["path"]).read_bytes() == video  # sent whole, not spliced
    assert server.ranges == [("/etag.mp4", "bytes=550-")] and not meta.exists()
    # The same validator as the server's: the resume is honoured.
    Path(row["path"]).unlink()
    part.write_bytes(video[:1000])
    meta.write_text(json.dumps({"url": url, "etag": '"v2"'}))
    row = fetch(stage, url)
    assert row["status"] == "ok" and Path(row["path"]).read_bytes() == video
    assert server.sent["/etag.mp4"] == len(video) + len(video) - 1000


def test_nasty_url_path_never_names_a_file(server, video, tmp_path):
    url = server.url("/../../etc/passwd?x=$(rm -rf)")
    row = fetch(make_stage(tmp_path), url)
    assert row["status"] == "ok"
    assert row["path"] == str(tmp_path / "media" / f"{url_video_id(url)}.mp4")
    assert media_files(tmp_path) == [f"{url_video_id(url)}.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media"]


def test_attempts_over_all_runs_end_in_error(server, tmp_path):
    row = fetch(make_stage(tmp_path, max_attempts=8), server.url("/fail500"), attempts=7)
    assert row["status"] == "error" and row["attempts"] == 8 and server.hits["/fail500"] == 1
    assert "giving up" in row["error"] and "(8 over all runs)" in row["error"]


# ------------------------------------------------------------------------------------ yt-dlp
def test_routing():
    for url in (
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "https://youtu.be/dQw4w9WgXcQ",
        "https://vimeo.com/76979871",
        "https://cdn.example.com/live/index.m3u8",
    ):
        assert needs_ytdlp(url), url
    for url in (
        "http://127.0.0.1:8000/video.mp4",
        "https://example.com/a/b.webm?sig=1",
        "https://storage.googleapis.com/bucket/clip.mp4",
    ):
        assert not needs_ytdlp(url), url
    # The same answers as asking each of yt-dlp's extractors (bar Generic) for suitability.
    from yt_dlp.extractor import gen_extractor_classes

    site_ies = [ie for ie in gen_extractor_classes() if ie.ie_key() != "Generic"]
    for url in (
        "https://www.youtube.com/playlist?list=PL1",
        "https://www.youtube.com/@chan/videos",
        "https://www.dropbox.com/s/abc/x.mp4",
        "https://www.twitch.tv/videos/123",
        "https://www.reddit.com/r/a/comments/b/c/",
        "https://example.org/watch?v=1",
    ):
        assert needs_ytdlp(url) == any(ie.suitable(url) for ie in site_ies), url
    stage = DownloadStage()
    assert stage.route("https://vimeo.com/76979871") == "yt-dlp"
    assert stage.route("https://example.com/a.mp4") == "http"
    assert DownloadStage(use_ytdlp="never").route("https://vimeo.com/1") == "http"
    assert DownloadStage(use_ytdlp="always").route("https://example.com/a.mp4") == "yt-dlp"
    with pytest.raises(OptionError, match="use_ytdlp"):
        DownloadStage(use_ytdlp="sometimes").validate()


def test_ytdlp_downloads_a_local_file(server, video, tmp_path):
    stage = make_stage(tmp_path, use_ytdlp="always")
    url = server.url("/good.mp4")
    row = fetch(stage, url)
    assert row["status"] == "ok" and row["method"] == "yt-dlp", row["error"]
    assert row["path"] == str(tmp_path / "media" / f"{url_video_id(url)}.mp4")
    assert Path(row["path"]).read_bytes() == video
    row = fetch(stage, server.url("/missing.mp4"))
    assert row["status"] == "error" and row["http_status"] == 404 and row["attempts"] == 1


@pytest.mark.parametrize(
    ("message", "status", "code"),
    [
        (
            "ERROR: [youtube] abc: Unable to download webpage: HTTP Error 503: Service Unavailable",
            "retry",
            503,
        ),
        ("ERROR: [youtube] abc: Sign in to confirm you're not a bot", "retry", None),
        ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", "error", None),
        ("ERROR: [vimeo] 1: HTTP Error 404: Not Found", "error", 404),
    ],
)
def test_ytdlp_failure_becomes_a_row(monkeypatch, tmp_path, message, status, code):
    import yt_dlp

    class FailingYDL:
        def __init__(self, opts):
            assert opts["noplaylist"] and opts["outtmpl"]["default"].startswith("vid.")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def extract_info(self, url, download=True):
            raise yt_dlp.utils.DownloadError(message)

    monkeypatch.setattr(yt_dlp, "YoutubeDL", FailingYDL)
    stage = make_stage(tmp_path, use_ytdlp="auto", max_retries=2)
    (row,) = stage.process({"video_id": "vid", "url": "https://www.youtube.com/watch?v=abc", "attempts": 0})[
        "downloads"
    ]
    assert row["method"] == "yt-dlp" and row["status"] == status and row["http_status"] == code
    assert row["error"].startswith("yt-dlp: [") and "ERROR" not in row["error"]
    assert row["attempts"] == (2 if status == "retry" else 1)


# ------------------------------------------------------------------------------------ credentials
def test_a_url_password_stays_out_of_the_manifest_and_still_authenticates(server, video, tmp_path):
    ws = Workspace(tmp_path / "ws")
    url = server.url("/private.mp4").replace("http://", "http://user:s3cret%20pass@")
    shown = server.url("/private.mp4").replace("http://", "http://user:***@")
    ingest(ws, [url])
    stats = run_stage(ws, DownloadStage(use_ytdlp="never"), progress=False)
    assert stats.statuses == {"ok": 1}  # the server only answers to user / 's3cret pass'
    (row,) = ws.sql("SELECT url, path FROM downloads")
    assert row["url"] == shown and Path(row["path"]).read_bytes() == video
    assert ws.sql("SELECT source FROM sources") == [{"source": shown}]
    for view in ("sources", "downloads", "videos"):
        assert "s3cret" not in json.dumps(ws.sql(f"SELECT * FROM {view}"), default=str)
    # On disk, only the owner-only secrets file holds it (run folders and media do not).
    secrets = ws.root / CREDENTIALS_PATH
    assert [p for p in ws.root.rglob("*") if p.is_file() and b"s3cret" in p.read_bytes()] == [secrets]
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets.parent.stat().st_mode) == 0o700


def test_error_messages_never_show_the_password(monkeypatch, tmp_path):
    import yt_dlp

    from datakit.credentials import save_credentials

    url = "https://user:***@videos.example.com/v/1"
    save_credentials(tmp_path, {url_video_id(url): "user:hunter22"})

    class LeakyYDL(yt_dlp.YoutubeDL):  # yt-dlp quotes the URL it was given in its errors
        def extract_info(self, given, download=True):
            raise yt_dlp.utils.DownloadError(f"ERROR: [generic] Unable to download {given} (hunter22)")

    monkeypatch.setattr(yt_dlp, "YoutubeDL", LeakyYDL)
    row = fetch(make_stage(tmp_path, use_ytdlp="always", max_retries=1), url)
    assert row["url"] == url and row["error"] == (
        "yt-dlp: [generic] Unable to download https://user:***@videos.example.com/v/1 (***) after 1 attempt"
    )


def test_a_redacted_url_without_its_stored_password_is_a_clear_error(tmp_path):
    row = fetch(make_stage(tmp_path), "http://user:***@127.0.0.1:1/x.mp4")
    assert row["status"] == "error" and row["attempts"] == 0
    assert row["error"] == (
        "no password for this URL in the workspace's secrets/url-credentials.json: ingest it again"
    )


# ------------------------------------------------------------------------------------ end to end
def test_end_to_end_with_rerun(server, video, tmp_path):
    ws = Workspace(tmp_path / "ws")
    paths = {
        "good": "/good.mp4",
        "flaky": "/flaky/e2e.mp4",
        "down": "/fail500",
        "gone": "/missing.mp4",
        "moved": "/redirect",
        "cut": "/truncated",
    }
    urls = {name: server.url(p) for name, p in paths.items()}
    ids = {name: url_video_id(u) for name, u in urls.items()}
    ws.write(
        "sources",
        [{"video_id": ids[n], "source": u, "source_kind": "url", "status": "ok"} for n, u in urls.items()],
    )
    stage = DownloadStage(timeout_s=2, max_retries=2, max_attempts=4, use_ytdlp="never")
    stage.clock = FakeClock()  # the worker threads share this stage object
    stats = run_stage(ws, stage, workers=4, progress=False)
    assert stats.planned == 6 and stats.statuses == {"ok": 3, "retry": 2, "error": 1}

    def rows() -> dict[str, dict]:
        by_id = {r["video_id"]: r for r in ws.sql("SELECT * FROM downloads")}
        return {n: by_id[i] for n, i in ids.items()}

    r = rows()
    assert {n: (r[n]["status"], r[n]["attempts"]) for n in r} == {
        "good": ("ok", 1),
        "flaky": ("ok", 2),
        "moved": ("ok", 1),
        "down": ("retry", 2),
        "cut": ("retry", 2),
        "gone": ("error", 1),
    }
    assert r["down"]["error"] == "HTTP 500 Internal Server Error after 2 attempts"
    assert r["gone"]["error"] == "HTTP 404 Not Found"
    videos = {v["video_id"]: v for v in ws.sql("SELECT * FROM videos")}
    for n in ("good", "flaky", "moved"):
        assert videos[ids[n]]["path"] == r[n]["path"] and Path(r[n]["path"]).read_bytes() == video
    assert videos[ids["down"]]["path"] is None and videos[ids["down"]]["status"] == "retry"

    hits = server.hits.copy()
    stats = run_stage(ws, stage, workers=4, progress=False)  # only the two 'retry' rows again
    assert stats.planned == 2
    r = rows()
    assert (r["down"]["status"], r["down"]["attempts"]) == ("error", 4)  # max_attempts reached
    assert r["down"]["error"] == (
        "HTTP 500 Internal Server Error after 2 attempts (4 over all runs); giving up (max_attempts 4)"
    )
    assert (r["cut"]["status"], r["cut"]["attempts"]) == ("error", 4)
    changed = {p for p in paths.values() if server.hits[p] != hits[p]}
    assert changed == {"/fail500", "/truncated"}  # ok and error rows were not fetched again
    assert run_stage(ws, stage, workers=4, progress=False).planned == 0
