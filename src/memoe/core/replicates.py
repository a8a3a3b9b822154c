"""Seeded replicates (parametric bootstraps) run in chunks, in worker processes when asked.

Every replicate gets its own child of one :class:`numpy.random.SeedSequence`, so the results are the
same whatever the number of workers or the chunk size: a chunk is only a unit of work, never a unit of
randomness. Used by the LMM parametric bootstrap (:mod:`memoe.inference.bootstrap`) and the bootstrap
LRT for the number of experts (:mod:`memoe.moe.bootstrap`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

__all__ = ["run_replicates"]

#: ``run_chunk(task, start, seeds) -> (start, rows)``: one row of results per seed; a module-level
#: function so that worker processes can unpickle it
ChunkRunner = Callable[[object, int, list], tuple[int, np.ndarray]]


def run_replicates(
    run_chunk: ChunkRunner,
    task: object,
    seeds: list[np.random.SeedSequence],
    out: np.ndarray,
    n_jobs: int | None,
    chunksize: int | None,
    on_done: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Fill ``out[i]`` with replicate ``i``'s results, chunk by chunk, serially or in processes.

    Parameters
    ----------
    run_chunk : callable
        ``run_chunk(task, start, seeds)`` returning ``(start, rows)`` with one row per seed.
    task : object
        What every replicate needs (picklable when ``n_jobs > 1``).
    seeds : list of numpy.random.SeedSequence
        One per replicate.
    out : numpy.ndarray, shape (len(seeds), ...)
        Receives the rows (NaN-initialised by the caller, so failed replicates stay NaN).
    n_jobs : int or None
        Worker processes; None: one per CPU; 1: in this process.
    chunksize : int or None
        Replicates per task; default about a quarter of each worker's share (load balancing).
    on_done : callable, optional
        Called with the number of replicates just finished (a progress bar's ``update``).

    Returns
    -------
    numpy.ndarray
        ``out``.
    """
    nsim = len(seeds)
    if nsim == 0:
        return out
    workers = (os.cpu_count() or 1) if n_jobs is None else max(1, int(n_jobs))
    workers = min(workers, nsim)
    size = chunksize or max(1, math.ceil(nsim / (4 * workers)))
    starts = list(range(0, nsim, size))

    def store(start: int, block: np.ndarray) -> None:
        out[start : start + len(block)] = block
        if on_done is not None:
            on_done(len(block))

    if workers == 1:
        for s in starts:
            store(*run_chunk(task, s, seeds[s : s + size]))
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_chunk, task, s, seeds[s : s + size]) for s in starts]
        for fut in as_completed(futures):
            store(*fut.result())
    return out
