"""What every worker does with its items, whatever the executor.

`prepare` runs in a few threads ahead of the model step with a bounded queue, items are grouped
into batches of `batch_size` for `process_batch`, and failures are isolated: a failing batch is
retried item by item so one bad input only ever costs its own row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from datakit.stage import Rows, Stage


def run_batch(stage: Stage, items: list[dict]) -> list[Rows]:
    """`process_batch`, with a failure narrowed down to the item that caused it."""
    try:
        results = stage.process_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"process_batch returned {len(results)} results for {len(items)} items")
        return results
    except Exception as exc:  # never let one input stop the run
        if len(items) == 1:
            return [stage.failure_rows(items[0], exc)]
        return [rows for item in items for rows in run_batch(stage, [item])]


def _prepared(stage: Stage, items: Iterable[dict]) -> Iterator[tuple[dict | None, Rows | None]]:
    """(prepared item, None) in input order, or (None, failure rows); a bounded number ahead."""
    if not stage.has_prepare:
        for item in items:
            yield item, None
        return
    ahead = max(1, stage.prefetch) * stage.batch_size
    with ThreadPoolExecutor(stage.prepare_threads, thread_name_prefix=f"{stage.name}-prepare") as pool:
        queue: deque[tuple[dict, Future]] = deque()
        source = iter(items)
        while True:
            while len(queue) < ahead:
                item = next(source, None)
                if item is None:
                    break
                queue.append((item, pool.submit(stage.prepare, item)))
            if not queue:
                return
            item, fut = queue.popleft()
            try:
                prepared = fut.result()
            except Exception as exc:
                yield None, stage.failure_rows(item, exc)
            else:
                yield prepared, None


def iter_results(stage: Stage, items: Iterable[dict]) -> Iterator[Rows]:
    """Rows for each item (prepared ahead, processed in batches), in input order."""
    batch: list[dict] = []
    for prepared, failure in _prepared(stage, items):
        if failure is not None:
            yield failure
            continue
        batch.append(prepared)
        if len(batch) >= stage.batch_size:
            yield from run_batch(stage, batch)
            batch = []
    if batch:
        yield from run_batch(stage, batch)
