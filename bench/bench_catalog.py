"""Open cost of the relocatable catalog (issue 13): relative globs vs re-binding on open.

Prints, side by side: opening a workspace in datakit (no rebuild: the globs are relative), what a
re-bind-on-open design would add per open (`build_catalog`), and a plain DuckDB client's first
query through `attach_sql()` vs from the workspace folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import duckdb

from datakit.workspace import Workspace


def best(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        ws.write(
            "sources",
            [
                {"video_id": f"v{i}", "source": f"/x/{i}.mp4", "source_kind": "file", "status": "ok"}
                for i in range(1000)
            ],
        )

        def plain_attach() -> None:
            with duckdb.connect() as con:
                con.execute(ws.attach_sql())
                con.execute("SELECT count(*) FROM clips").fetchall()

        def plain_cwd() -> None:
            cwd = os.getcwd()
            os.chdir(ws.root)
            try:
                with duckdb.connect("manifest.duckdb", read_only=True) as con:
                    con.execute("SELECT count(*) FROM clips").fetchall()
            finally:
                os.chdir(cwd)

        rows = [
            ("datakit open (Workspace(create=False))", best(lambda: Workspace(ws.root, create=False))),
            ("re-bind on open would add (build_catalog)", best(ws.build_catalog)),
            ("plain DuckDB: attach_sql + first clips query", best(plain_attach)),
            ("plain DuckDB: from the workspace folder", best(plain_cwd)),
        ]
    print(f"loadavg: {open('/proc/loadavg').read().strip()}  duckdb {duckdb.__version__}")
    for name, ms in rows:
        print(f"{name:48s} {ms:8.1f} ms (best of 5)")


if __name__ == "__main__":
    main()
