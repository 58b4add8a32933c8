"""Download throughput against a local HTTP server: downloads/s and MB/s per worker count.

    .venv/bin/python bench/bench_download.py [--n 200] [--size-kb 512] [--workers 1,4,16] [--no-fsync]

The server runs in its own process (ThreadingHTTPServer, HTTP/1.1 keep-alive, files from memory),
so client and server do not share a GIL; on a small machine they still share the cores. Each
worker count gets a fresh workspace; times are the whole `run_stage` (plan, download, manifest
writes), with yt-dlp routing on ('auto'), as a real run does; yt-dlp's one-time import is excluded.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakit.executors import run_stage  # noqa: E402
from datakit.ids import url_video_id  # noqa: E402
from datakit.stages.download import DownloadStage, needs_ytdlp  # noqa: E402
from datakit.workspace import Workspace  # noqa: E402


def serve(size: int, port_q: mp.Queue) -> None:
    body = os.urandom(size)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    srv = Server(("127.0.0.1", 0), Handler)
    port_q.put(srv.server_address[1])
    srv.serve_forever()


def bench(port: int, n: int, workers: int, fsync: bool, root: Path) -> tuple[float, float, int]:
    ws = Workspace(root / f"ws-{workers}")
    urls = [f"http://127.0.0.1:{port}/w{workers}/{i:05d}.mp4" for i in range(n)]
    ws.write(
        "sources",
        [{"video_id": url_video_id(u), "source": u, "source_kind": "url", "status": "ok"} for u in urls],
    )
    stage = DownloadStage(fsync=fsync, timeout_s=10)
    t0 = time.perf_counter()
    stats = run_stage(ws, stage, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    assert stats.statuses == {"ok": n}, stats.statuses
    return seconds, stage.bytes_downloaded / seconds / 1e6, stage.files_downloaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="files per run")
    ap.add_argument("--size-kb", type=int, default=512, help="size of each file")
    ap.add_argument("--workers", default="1,4,16", help="comma-separated worker counts")
    ap.add_argument("--no-fsync", action="store_true", help="skip the fsync before each rename")
    args = ap.parse_args()

    port_q: mp.Queue = mp.Queue()
    server = mp.Process(target=serve, args=(args.size_kb * 1024, port_q), daemon=True)
    server.start()
    port = port_q.get(timeout=10)
    print(
        f"{args.n} files x {args.size_kb} KiB, fsync={'off' if args.no_fsync else 'on'}, {os.cpu_count()} cpus"
    )
    t0 = time.perf_counter()
    needs_ytdlp("https://example.com/warm-up.mp4")  # once per process: import yt-dlp, compile patterns
    print(
        f"yt-dlp routing warm-up (once per process, not in the times below): {time.perf_counter() - t0:.2f} s"
    )
    print(f"{'workers':>8} {'seconds':>8} {'downloads/s':>12} {'MB/s':>8}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
            for workers in (int(w) for w in args.workers.split(",")):
                seconds, mbps, files = bench(port, args.n, workers, not args.no_fsync, Path(tmp))
                print(f"{workers:>8} {seconds:>8.2f} {files / seconds:>12.1f} {mbps:>8.1f}", flush=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
