"""The local executor: this process, a thread pool, a process pool, or one worker per GPU.

- `-j 1` (or one item): in this process.
- I/O-bound stages (downloads): `-j N` threads sharing one stage.
- CPU stages: `-j N` worker processes (forkserver), each calling `setup(ctx)` once; chunks of
  `batch_size` items travel to them, at most two chunks per worker in flight.
- GPU stages (`resources.gpus > 0`): one worker per visible GPU (`CUDA_VISIBLE_DEVICES`, or what
  torch sees), or `1 / gpus` workers per GPU for fractional GPUs; each worker sees only its GPU.
  Without a GPU the stage runs on the CPU like a CPU stage (`-j N` workers).

Workers exit when the parent dies (a watchdog thread polls the parent's pid), and a worker that
dies (segfault, OOM killer) turns its items into `retry` rows and is replaced.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from datakit.executors.base import ContextFactory, Executor, StageSetupError, setup_stage
from datakit.executors.work import iter_results
from datakit.stage import Rows, Stage

__all__ = ["LocalExecutor", "StageSetupError", "local_results", "plan_workers", "visible_gpus"]


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what torch counts."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    if not any(Path("/dev").glob("nvidia[0-9]*")):  # no NVIDIA device node: skip importing torch
        return []
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def plan_workers(stage: Stage, workers: int) -> tuple[int, list[str]]:
    """(worker count, GPU id per rank) for this machine."""
    if stage.resources.gpus <= 0:
        return max(1, workers), []
    gpus = visible_gpus()
    if not gpus:  # no GPU here: the stage runs on the CPU like any other (`-j N` workers)
        return max(1, workers), []
    per_gpu = max(1, math.floor(1 / stage.resources.gpus)) if stage.resources.gpus < 1 else 1
    slots = [g for g in gpus for _ in range(per_gpu)]
    return len(slots), slots


def local_results(stage: Stage, items: list[dict], workers: int, make_ctx: ContextFactory) -> Iterator[Rows]:
    n, gpu_slots = plan_workers(stage, workers)
    if not items:
        return
    if gpu_slots:
        yield from _process_pool(stage, items, n, make_ctx, gpu_slots)
        return
    device = "cpu"
    if n <= 1 or len(items) == 1:
        setup_stage(stage, make_ctx(rank=0, world_size=1, device=device))
        try:
            yield from iter_results(stage, items)
        finally:
            stage.teardown()
        return
    if stage.io_bound:
        setup_stage(stage, make_ctx(rank=0, world_size=1, device=device))
        try:
            with ThreadPoolExecutor(n, thread_name_prefix=stage.name) as pool:
                yield from _bounded(pool, lambda chunk: list(iter_results(stage, chunk)), items, stage, n)
        finally:
            stage.teardown()
        return
    yield from _process_pool(stage, items, n, make_ctx, [])


class LocalExecutor(Executor):
    name = "local"

    def results(self, stage: Stage, items: list[dict], make_ctx: ContextFactory) -> Iterator[Rows]:
        return local_results(stage, items, self.workers, make_ctx)


# --------------------------------------------------------------------------- process pool
_worker_stage: Stage | None = None
_setup_error: str | None = None  # this worker's setup failed: every chunk raises it (one line, no rows)


def _init_worker(
    stage: Stage, make_ctx: ContextFactory, counter, world_size: int, gpu_slots: list[str], parent_pid: int
) -> None:
    global _worker_stage, _setup_error
    _start_watchdog(parent_pid)
    with counter.get_lock():
        rank = counter.value
        counter.value += 1
    device = "cpu"
    if gpu_slots:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_slots[rank % len(gpu_slots)]
        device = "cuda:0"
    _worker_stage = stage
    try:  # an initializer that raises would break the pool: each item would become a "worker died" retry
        setup_stage(stage, make_ctx(rank=rank % world_size, world_size=world_size, device=device))
    except StageSetupError as exc:
        _setup_error = str(exc)


def _run_chunk(chunk: list[dict]) -> list[Rows]:
    assert _worker_stage is not None
    if _setup_error is not None:
        raise StageSetupError(_setup_error)
    return list(iter_results(_worker_stage, chunk))


def _start_watchdog(parent_pid: int, interval_s: float = 0.5) -> None:
    """Exit this worker as soon as the process that started the run is gone."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _process_pool(
    stage: Stage, items: list[dict], n: int, make_ctx: ContextFactory, gpu_slots: list[str]
) -> Iterator[Rows]:
    ctx = get_context("forkserver")  # safe with threads (torch, PyAV) in the parent
    remaining = items
    while remaining:
        counter = ctx.Value("i", 0)
        initargs = (stage, make_ctx, counter, n, gpu_slots, os.getpid())
        lost: list[dict] = []
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=initargs) as pool:
            yield from _bounded(pool, _run_chunk, remaining, stage, n, lost=lost)
        remaining = []
        if lost:  # a worker died: its items are retried by a later run, the rest go on in a new pool
            yield from _lost_rows(stage, lost[:1], "worker process died while processing this item")
            remaining = lost[1:]


def _lost_rows(stage: Stage, items: list[dict], message: str) -> Iterator[Rows]:
    for item in items:
        yield stage.failure_rows(item, BrokenProcessPool(message))


def _bounded(
    pool, fn, items: list[dict], stage: Stage, workers: int, lost: list[dict] | None = None
) -> Iterator[Rows]:
    """Submit chunks of `batch_size` items, at most 2 per worker in flight; yield rows as they finish."""
    size = max(1, stage.batch_size)
    chunks = iter([items[i : i + size] for i in range(0, len(items), size)])
    in_flight: dict = {}
    while True:
        while len(in_flight) < 2 * workers:
            chunk = next(chunks, None)
            if chunk is None:
                break
            in_flight[pool.submit(fn, chunk)] = chunk
        if not in_flight:
            return
        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for fut in done:
            chunk = in_flight.pop(fut)
            try:
                results = fut.result()
            except BrokenProcessPool:
                if lost is None:
                    raise
                # Which item killed the worker is unknown: every unfinished item goes back.
                lost.extend(chunk)
                for other in in_flight.values():
                    lost.extend(other)
                lost.extend(item for rest in chunks for item in rest)
                return
            yield from results
