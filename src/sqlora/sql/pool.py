"""Tasks (queries, mostly) run in worker processes that a crash cannot take down: a worker that dies costs
only the task that killed it, which gets a ``crashed`` result."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, TypeVar

from sqlora.sql.sandbox import run_query

T = TypeVar("T")


def run_tasks(function: Callable[..., T], tasks: list[tuple], *, workers: int, crashed: T) -> list[T]:
    """``[function(*task) for task in tasks]``, in ``workers`` processes when workers > 1.

    A task whose worker process dies gets ``crashed`` as its result; the others still run.
    """
    if workers <= 1:
        return [function(*task) for task in tasks]

    results: list[T | None] = [None] * len(tasks)
    todo = list(range(len(tasks)))
    while todo:
        broken = _run_in_pool(function, tasks, todo, results, workers=workers)
        if broken and _run_in_pool(run_query, [(Path(), "")], [0], [None], workers=1):
            # Even a query that never touches SQLite lost its worker: processes die on start-up.
            raise RuntimeError(
                "evaluation worker processes die on start-up; a script that calls this with "
                "workers > 1 needs an `if __name__ == '__main__':` guard (or use workers=1)"
            )
        # A worker died (a crash inside SQLite, or the OS killing it) and took the pool down
        # with every unfinished task. The pool hands out tasks in submission order, so the one
        # that killed it is among the first unfinished: run those alone, each in a fresh
        # process, and resubmit the rest. Every round settles at least one task.
        suspects, todo = broken[: workers + 1], broken[workers + 1 :]
        for index in suspects:
            if _run_in_pool(function, tasks, [index], results, workers=1):
                results[index] = crashed
    return results  # type: ignore[return-value]  # every slot is filled by now


def _run_in_pool(
    function: Callable[..., T],
    tasks: list[tuple],
    indexes: list[int],
    results: list[T | None],
    *,
    workers: int,
) -> list[int]:
    """Run ``function(*tasks[i])`` for each i in ``indexes`` in a new pool, into ``results[i]``.

    Returns the indexes (in order) whose task was lost because the pool broke.
    """
    # "spawn" gives workers a clean interpreter: forking a parent that holds threads (or big
    # ML libraries) can deadlock, and workers need nothing from the parent's memory.
    context = multiprocessing.get_context("spawn")
    broken: list[int] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(indexes)), mp_context=context) as pool:
        futures: list[tuple[int, Future | None]] = []
        for index in indexes:
            try:
                futures.append((index, pool.submit(function, *tasks[index])))
            except BrokenProcessPool:
                futures.append((index, None))
        for index, future in futures:
            try:
                if future is None:
                    raise BrokenProcessPool
                results[index] = future.result()
            except BrokenProcessPool:
                broken.append(index)
    return broken
