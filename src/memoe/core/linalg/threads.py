"""Temporarily limit the threads of the BLAS libraries numpy and scipy loaded.

An optimiser evaluates the objective a hundred times, and each evaluation is a chain of small
and medium BLAS/LAPACK calls (dot products over 10^5 groups, a Cholesky of order 10^3). For these
sizes handing work to a second thread costs more than it saves whenever the other core is busy:
on a shared 2-core machine a 1,131 x 1,131 ``potrf`` was measured at 21 ms with one thread and 82 ms
with two (median of 30), and a threaded ``ddot`` over 10^5 entries went from 0.02 ms to several ms.
:func:`blas_threads` caps the thread count for the duration of a ``with`` block and restores it.

For OpenBLAS (what the numpy and scipy wheels bundle, one copy each) it calls the library's own
``*openblas*_set_num_threads`` through ctypes for every OpenBLAS mapped into the process; for other
BLAS builds it uses ``threadpoolctl`` if that is installed. Otherwise, or on any failure, it does
nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

__all__ = ["blas_threads", "idle_cores", "pooled", "pooled_active", "usable_cores"]

_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
_handles: list[tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]] | None = None


def _openblas_handles() -> list[tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]]:
    global _handles
    if _handles is not None:
        return _handles
    found: list[tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]] = []
    try:
        if sys.platform.startswith("linux"):
            with open("/proc/self/maps") as fh:
                paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line})
            for path in paths:
                lib = ctypes.CDLL(path)
                for get_name, set_name in _SYMBOLS:
                    getter = getattr(lib, get_name, None)
                    setter = getattr(lib, set_name, None)
                    if getter is not None and setter is not None:
                        getter.restype = ctypes.c_int
                        setter.argtypes = [ctypes.c_int]
                        found.append((getter, setter))
                        break
    except (OSError, ValueError):  # no /proc, unloadable library: leave threads alone
        found = []
    _handles = found
    return found


@contextlib.contextmanager
def blas_threads(limit: int | None) -> Iterator[None]:
    """Cap the BLAS thread count at ``limit`` inside the block (``None``: no change).

    Cheap enough to enter once per objective evaluation (a few microseconds); nested blocks
    change nothing when the count is already at or below the cap.

    Examples
    --------
    >>> with blas_threads(1):
    ...     pass
    """
    if limit is None:
        yield
        return
    handles = _openblas_handles()
    if not handles:
        controller = _threadpoolctl_controller()
        if controller is None:
            yield
        else:
            with controller.limit(limits=limit, user_api="blas"):
                yield
        return
    before = [int(get()) for get, _ in handles]
    try:
        for (_, set_), n in zip(handles, before, strict=True):
            if n > limit:
                set_(limit)
        yield
    finally:
        for (_, set_), n in zip(handles, before, strict=True):
            if n > limit:
                set_(n)


_controller: object | None = None


def _threadpoolctl_controller():
    """A cached ``threadpoolctl.ThreadpoolController`` for non-OpenBLAS builds, if installed."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except Exception:  # not installed or failed to inspect the process: leave threads alone
            _controller = False
    return _controller or None


def usable_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where that is missing).

    Examples
    --------
    >>> usable_cores() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def idle_cores() -> int:
    """Usable cores not running anything right now (besides the calling thread), from ``/proc/loadavg``.

    The fourth field of ``/proc/loadavg`` counts the threads running or runnable at this instant, the
    caller included. A second worker thread only pays when a core is idle: with the other core busy
    (another process), two threads of ours share one core with it and a pooled stencil of two 75 ms
    evaluations took 200 ms against 155 ms serially. Where ``/proc`` is missing, every usable core but
    this one counts as idle.

    Examples
    --------
    >>> idle_cores() >= 0
    True
    """
    cores = usable_cores()
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return cores - 1
    return max(0, cores - max(1, running))


_pooled = 0
_pooled_lock = threading.Lock()


@contextlib.contextmanager
def pooled() -> Iterator[None]:
    """Mark a section where several of our threads evaluate in parallel (a pooled stencil).

    Inside it :func:`pooled_active` is True, and code that would split one evaluation over a second
    thread (:func:`memoe.core.linalg.split_inverse.potri_lower`) stays serial: the cores are already
    taken by the pool, and the ``/proc/loadavg`` sample of :func:`idle_cores` may miss a pool thread
    waiting for the GIL.

    Examples
    --------
    >>> with pooled():
    ...     pooled_active()
    True
    """
    global _pooled
    with _pooled_lock:
        _pooled += 1
    try:
        yield
    finally:
        with _pooled_lock:
            _pooled -= 1


def pooled_active() -> bool:
    """Whether a :func:`pooled` section is running on any thread.

    Examples
    --------
    >>> pooled_active()
    False
    """
    return _pooled > 0
