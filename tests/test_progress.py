"""datakit.progress: off a terminal, long work prints plain lines (done/total, rate, ETA)."""

from __future__ import annotations

import io

from datakit.progress import Progress, plain_line


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_every_interval_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    with Progress("scenes", 100, stream=out, interval_s=5, tty=False, clock=clock) as bar:
        for _ in range(40):
            clock.t += 0.5  # 2 items/s
            bar.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 + 1, lines  # at 5, 10, 15, 20 s and the final line
    assert lines[0] == "scenes: 10/100 (10%) 2 items/s, ETA 45s"
    assert lines[-1].startswith("scenes: 40/100 (40%) 2 items/s, ETA 30s")


def test_postfix_initial_and_disabled():
    assert plain_line("train video", 15, 100, 10.0, "steps", initial=5, postfix={"loss": "0.1234"}) == (
        "train video: 15/100 (15%) 1 steps/s, ETA 1m25s, loss 0.1234"
    )
    out = io.StringIO()
    with Progress("x", 3, stream=out, interval_s=0, tty=False, enabled=False) as bar:
        bar.advance()
    assert out.getvalue() == ""
