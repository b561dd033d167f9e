"""Run one function over many records in worker processes, keeping order and counting skips."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

from medsynth.data.readers import UnreadableFile

MAX_WORKERS = 8


def default_workers(requested: int = 0) -> int:
    if requested > 0:
        return requested
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_WORKERS))


def _call(fn, record):
    try:
        return record, fn(record), None
    except UnreadableFile as e:
        return record, None, e.reason
    except MemoryError:
        raise
    except Exception as e:  # a reader bug or a library's surprise must not kill a 100k-file run
        return record, None, f"unexpected error while reading: {type(e).__name__}: {e}"


def _init_worker():
    import torch

    torch.set_num_threads(1)


class _Bound:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, record):
        return _call(self.fn, record)


def map_records(fn: Callable, records: list, workers: int = 0, desc: str = "reading",
                progress: bool | None = None) -> Iterator[tuple[object, object, str | None]]:
    """Yield ``(record, result, skip_reason)`` in input order; ``fn`` must be picklable (top level)."""
    workers = default_workers(workers)
    bar = _bar(len(records), desc, progress)
    try:
        if workers == 1 or len(records) < 4 * workers:
            results: Iterable = (_call(fn, r) for r in records)
            for out in results:
                bar.update(1)
                yield out
            return
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        chunk = max(1, min(64, len(records) // (workers * 8)))
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
            for out in ex.map(_Bound(fn), records, chunksize=chunk):
                bar.update(1)
                yield out
    finally:
        bar.close()


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm import tqdm

    # None: a bar only when stderr is a terminal, so logs and --json output stay clean
    return tqdm(total=total, desc=desc, unit="file", disable=(None if progress is None else not progress),
                leave=False, dynamic_ncols=True)
