"""One progress display for datakit stages and the trainer.

On a terminal: a rich bar (rich is imported only then). Anywhere else (a log file, a pipe, a
batch job): one plain line every `interval_s` seconds, and one at the end:

    scenes: 120/1000 (12%) 3.1 items/s, ETA 4m43s

    with Progress("scenes", total=len(items)) as bar:
        for ...:
            bar.advance(loss="0.1234")   # optional postfix fields

`DATAKIT_PROGRESS_INTERVAL` (seconds) sets the plain-line interval (default 5).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def plain_line(
    label: str,
    done: int,
    total: int | None,
    elapsed: float,
    unit: str = "items",
    initial: int = 0,
    postfix: dict | None = None,
) -> str:
    """`label: done/total (pct) rate unit/s, ETA t` (the rate counts this run's work only)."""
    rate = (done - initial) / elapsed if elapsed > 0 else 0.0
    text = f"{label}: {done}/{total}" if total else f"{label}: {done}"
    if total:
        text += f" ({100 * done / total:.0f}%)"
    text += f" {rate:.3g} {unit}/s"
    if total and rate > 0:
        text += f", ETA {_duration((total - done) / rate)}"
    elif total and done < total:
        text += ", ETA ?"
    if postfix:
        text += "".join(f", {k} {v}" for k, v in postfix.items())
    return text


class Progress:
    """Context manager; `advance(n=1, **postfix)` after each unit of work."""

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        enabled: bool = True,
        initial: int = 0,
        unit: str = "items",
        stream: IO[str] | None = None,
        interval_s: float | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        console=None,
    ) -> None:
        self.label, self.total, self.enabled, self.unit = label, total, enabled, unit
        self.done = self.initial = initial
        self.stream = stream or sys.stderr
        self.interval_s = (
            float(os.environ.get("DATAKIT_PROGRESS_INTERVAL", 5)) if interval_s is None else interval_s
        )
        self.tty = (self.stream.isatty() if console is None else console.is_terminal) if tty is None else tty
        self.clock, self.console = clock, console
        self.postfix: dict = {}
        self._bar = self._task = None

    def __enter__(self) -> Progress:
        self.start = self.last = self.clock()
        if self.enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn(f"[bold]{self.label}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[postfix]}"),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.initial, postfix="")
        return self

    def advance(self, n: int = 1, **postfix) -> None:
        self.done += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            text = " ".join(f"{k} {v}" for k, v in self.postfix.items())
            self._bar.update(self._task, advance=n, postfix=text)
            return
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        line = plain_line(
            self.label, self.done, self.total, now - self.start, self.unit, self.initial, self.postfix
        )
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        elif self.enabled and self.done > self.initial:
            self._print(self.clock())
            self.enabled = False

    def __exit__(self, *exc) -> None:
        self.close()
