"""Inverse of a symmetric positive definite matrix from its Cholesky factor, on two threads.

LAPACK ``potri`` (``S^-1 = L^-T L^-1`` from the lower factor ``L``) is one ``trtri`` and one ``lauum``, each
single-threaded here (OpenBLAS with two threads was 7x slower with the other core busy,
:mod:`memoe.core.linalg.threads`). With ``L = [[L11, 0], [L21, L22]]`` (``L11`` of order ``k``):

``L^-1 = [[A, 0], [X, C]]`` with ``A = L11^-1``, ``C = L22^-1``, ``X = -C L21 A``, and
``S^-1 = [[A'A + X'X, X'C], [C'X, C'C]]``.

The work splits into three rounds of two independent halves, each a LAPACK/BLAS call on a block of the
matrix in place (through the function pointers of :mod:`scipy.linalg.cython_lapack` and
:mod:`scipy.linalg.cython_blas`, called by :mod:`ctypes`, which releases the GIL):

1. ``trtri(L11)`` | ``trtri(L22)``;
2. ``L21 := -L21 A`` by row halves, then ``L21 := C L21`` by column halves (``X``);
3. ``lauum(A)`` then ``A'A += X'X`` (``syrk``) | ``X'`` copied to the (unused) upper block, ``X'C``
   (``trmm``) there, then ``lauum(C)``;

and finally the upper block ``X'C`` is copied back (transposed) to the lower block. The same flops as
``potri`` (``n^3 / 3 + n^3 / 3``) in 3 rounds of about ``n^3 / 8`` each: ~2x faster when a second core is
idle. Results equal ``potri``'s to rounding (different summation order), not bit for bit.

R has no counterpart (``chol2inv`` is ``potri``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.linalg import lapack

from memoe.core.linalg.threads import idle_cores, pooled_active, usable_cores
from memoe.errors import ArgumentError

__all__ = ["helper_pool", "potrf_lower", "potri_lower", "split_available", "split_workers"]

_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_dbl_p = ctypes.POINTER(ctypes.c_double)
_c_chr_p = ctypes.c_char_p

_SIGNATURES = {
    # cython_lapack / cython_blas: Fortran calling convention, every argument by reference
    "dtrtri": ("lapack", [_c_chr_p, _c_chr_p, _c_int_p, _c_dbl_p, _c_int_p, _c_int_p]),
    "dlauum": ("lapack", [_c_chr_p, _c_int_p, _c_dbl_p, _c_int_p, _c_int_p]),
    "dtrmm": ("blas", [_c_chr_p, _c_chr_p, _c_chr_p, _c_chr_p, _c_int_p, _c_int_p, _c_dbl_p, _c_dbl_p, _c_int_p,
                       _c_dbl_p, _c_int_p]),
    "dpotri": ("lapack", [_c_chr_p, _c_int_p, _c_dbl_p, _c_int_p, _c_int_p]),
    "dpotrf": ("lapack", [_c_chr_p, _c_int_p, _c_dbl_p, _c_int_p, _c_int_p]),
    "dtrsm": ("blas", [_c_chr_p, _c_chr_p, _c_chr_p, _c_chr_p, _c_int_p, _c_int_p, _c_dbl_p, _c_dbl_p, _c_int_p,
                       _c_dbl_p, _c_int_p]),
    "dgemm": ("blas", [_c_chr_p, _c_chr_p, _c_int_p, _c_int_p, _c_int_p, _c_dbl_p, _c_dbl_p, _c_int_p, _c_dbl_p,
                       _c_int_p, _c_dbl_p, _c_dbl_p, _c_int_p]),
    "dsyrk": ("blas", [_c_chr_p, _c_chr_p, _c_int_p, _c_int_p, _c_dbl_p, _c_dbl_p, _c_int_p, _c_dbl_p, _c_dbl_p,
                       _c_int_p]),
}
_funcs: dict[str, Callable] | None = None
# order of the diagonal blocks of the two-thread Cholesky (potrf_lower), whose own potrf runs on one thread:
# at order 1,151 (InstEval) 13.0 ms serial, 9.3 ms in 2 blocks, 8.0 in 4, 7.6-7.8 in 6-8, 7.9 in 10
POTRF_BLOCK = 192
# below this order both stay serial LAPACK: a hand-over to the pool thread costs tens of microseconds
SPLIT_MIN_ORDER = 256
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1


def _load() -> dict[str, Callable]:
    """ctypes callables of the LAPACK/BLAS routines scipy links (empty where they cannot be had)."""
    global _funcs
    if _funcs is not None:
        return _funcs
    found: dict[str, Callable] = {}
    try:
        import scipy.linalg.cython_blas as cblas
        import scipy.linalg.cython_lapack as clapack

        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype = ctypes.c_char_p
        get_name.argtypes = [ctypes.py_object]
        get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        get_ptr.restype = ctypes.c_void_p
        get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
        for name, (lib, args) in _SIGNATURES.items():
            cap = (clapack if lib == "lapack" else cblas).__pyx_capi__[name]
            ptr = get_ptr(cap, get_name(cap))
            # CFUNCTYPE (not PYFUNCTYPE): ctypes releases the GIL for the call
            found[name] = ctypes.CFUNCTYPE(None, *args)(ptr)
    except Exception:  # no cython_lapack capsules in this scipy build: potri_lower stays serial
        found = {}
    _funcs = found
    return found


def split_available() -> bool:
    """Whether the two-thread inverse can run here (scipy exposes its LAPACK/BLAS function pointers).

    Examples
    --------
    >>> split_available() in (True, False)
    True
    """
    return len(_load()) == len(_SIGNATURES)


def split_workers() -> int:
    """Threads for one :func:`potrf_lower` / :func:`potri_lower` call made now: 2 or 1.

    2 on the main thread when a second usable core is idle at the call (``potri`` of order 1,151: 31 -> 17 ms,
    ``potrf`` 13 -> 7.7 ms); 1 on a worker of a pooled stencil (both cores already run one evaluation each),
    inside a :func:`memoe.core.linalg.threads.pooled` section, with the other core busy (the two halves would
    share one core) or where scipy's LAPACK function pointers are missing. Shared by the gradient
    (:mod:`memoe.lmm.gradient`) and the objective's refactorisation (:mod:`memoe.lmm.objective`).

    Examples
    --------
    >>> split_workers() in (1, 2)
    True
    """
    if threading.current_thread() is not threading.main_thread() or pooled_active() or not split_available():
        return 1
    return 2 if usable_cores() >= 2 and idle_cores() >= 1 else 1


def helper_pool() -> ThreadPoolExecutor:
    """The one-worker pool the two-thread paths hand their second half to (created on first use).

    Examples
    --------
    >>> helper_pool().submit(sum, [1, 2]).result()
    3
    """
    return _executor()


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _lock:
        # a forked child inherits the executor but not its thread: a job submitted there would never run
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memoe-potri")
            _pool_pid = os.getpid()
        return _pool


class _Mat:
    """Pointer arithmetic on a Fortran-ordered float64 square matrix (leading dimension ``n``)."""

    def __init__(self, a: np.ndarray):
        self.a = a
        self.n = a.shape[0]
        self.base = a.ctypes.data
        self.ld = ctypes.c_int(self.n)

    def at(self, i: int, j: int):
        return ctypes.cast(self.base + 8 * (i + j * self.n), _c_dbl_p)


def _i(v: int) -> ctypes.c_int:
    return ctypes.c_int(v)


def _d(v: float) -> ctypes.c_double:
    return ctypes.c_double(v)


def _ref(x):
    return ctypes.byref(x)


def _trtri(f, m: _Mat, i: int, n: int) -> int:
    info = ctypes.c_int(0)
    f["dtrtri"](b"L", b"N", _ref(_i(n)), m.at(i, i), _ref(m.ld), _ref(info))
    return info.value


def _lauum(f, m: _Mat, i: int, n: int) -> int:
    info = ctypes.c_int(0)
    f["dlauum"](b"L", _ref(_i(n)), m.at(i, i), _ref(m.ld), _ref(info))
    return info.value


def _trmm(f, side: bytes, trans: bytes, rows: int, cols: int, alpha: float, m: _Mat, ti: int, bi: int, bj: int):
    """``B := alpha op(T) B`` (side L) or ``alpha B op(T)`` (side R); T lower non-unit at ``(ti, ti)``,
    B the ``rows x cols`` block at ``(bi, bj)``."""
    if rows == 0 or cols == 0:
        return
    f["dtrmm"](side, b"L", trans, b"N", _ref(_i(rows)), _ref(_i(cols)), _ref(_d(alpha)), m.at(ti, ti), _ref(m.ld),
               m.at(bi, bj), _ref(m.ld))


def _syrk_xtx(f, m: _Mat, k: int, n2: int):
    """Lower triangle of ``block(0, 0) += X'X``, ``X`` the ``n2 x k`` block at ``(k, 0)``."""
    f["dsyrk"](b"L", b"T", _ref(_i(k)), _ref(_i(n2)), _ref(_d(1.0)), m.at(k, 0), _ref(m.ld), _ref(_d(1.0)),
               m.at(0, 0), _ref(m.ld))


def potri_lower(c: np.ndarray, workers: int = 1, split: int | None = None,
                order: int | None = None) -> tuple[np.ndarray, int]:
    """The inverse (lower triangle) of ``S = L L'`` from its lower Cholesky factor, in place.

    Parameters
    ----------
    c : numpy.ndarray, shape (N, N), Fortran order, float64
        The lower factor in the lower triangle (as LAPACK ``potrf`` returns it); on the two-thread path the
        strict upper triangle of the leading ``order x order`` block is work space (its contents are lost).
    workers : int
        2: split the work over the calling thread and one pool thread (use when a core is idle,
        :func:`memoe.core.linalg.threads.idle_cores`); 1: LAPACK ``dpotri``.
    split : int, optional
        Order ``k`` of the leading block of the split (default ``order // 2``, and no split below order
        ``SPLIT_MIN_ORDER``); for tests.
    order : int, optional
        Invert only the leading ``order x order`` block of ``c`` (default: all of it), in place: the factor
        of a bordered matrix ``[[S, B], [B', C]]`` starts with the factor of ``S``, so this is ``S^-1``
        without the border correction ``(Omega^-1)_SS - N N'`` of inverting the whole.

    Returns
    -------
    inv : numpy.ndarray
        ``c`` itself with ``S^-1`` in the lower triangle of its leading block (the rest of the lower
        triangle unchanged).
    info : int
        LAPACK's: 0 on success, ``j > 0`` where diagonal entry ``j`` of the factor is zero (no inverse).

    Examples
    --------
    >>> import numpy as np
    >>> S = np.array([[4.0, 2.0, 0.0], [2.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    >>> c = np.asfortranarray(np.linalg.cholesky(S))
    >>> inv, info = potri_lower(c, workers=2, split=1)
    >>> bool(np.allclose(np.tril(inv), np.tril(np.linalg.inv(S))))
    True
    """
    N = c.shape[0]
    n = N if order is None else int(order)
    if not (c.ndim == 2 and c.shape == (N, N) and 0 <= n <= N):
        raise ArgumentError(f"potri_lower needs a square matrix and 0 <= order <= {N}; got shape {c.shape}, order {n}")
    fast = c.flags.f_contiguous and c.dtype == np.float64 and split_available()
    if split is None:
        k = n // 2 if n >= SPLIT_MIN_ORDER else 0
    else:
        k = int(split)
    if not fast:
        if n == N:
            return lapack.dpotri(c, lower=1, overwrite_c=1)
        inv, info = lapack.dpotri(c[:n, :n], lower=1)
        c[:n, :n] = inv
        return c, info
    f = _load()
    m = _Mat(c)
    if workers < 2 or not 0 < k < n:
        info = ctypes.c_int(0)
        f["dpotri"](b"L", _ref(_i(n)), m.at(0, 0), _ref(m.ld), _ref(info))
        return c, info.value
    n2 = n - k
    pool = _executor()

    # round 1: the two diagonal blocks' inverses
    job = pool.submit(_trtri, f, m, k, n2)
    info1 = _trtri(f, m, 0, k)
    info2 = job.result()
    if info1 or info2:
        return c, (info1 if info1 else k + info2)
    # round 2: X = -C L21 A, by row halves (right product) then column halves (left product)
    h = n2 // 2
    job = pool.submit(_trmm, f, b"R", b"N", n2 - h, k, -1.0, m, 0, k + h, 0)
    _trmm(f, b"R", b"N", h, k, -1.0, m, 0, k, 0)
    job.result()
    h = k // 2
    job = pool.submit(_trmm, f, b"L", b"N", n2, k - h, 1.0, m, k, k, h)
    _trmm(f, b"L", b"N", n2, h, 1.0, m, k, k, 0)
    job.result()

    # round 3: A'A + X'X | X'C (in the upper block) and C'C
    def second() -> int:
        c[:k, k:n] = c[k:n, :k].T
        _trmm(f, b"R", b"N", k, n2, 1.0, m, k, 0, k)
        return _lauum(f, m, k, n2)

    job = pool.submit(second)
    info1 = _lauum(f, m, 0, k)
    _syrk_xtx(f, m, k, n2)
    info2 = job.result()
    c[k:n, :k] = c[:k, k:n].T
    return c, int(info1 or info2)


def _potrf(f, m: _Mat, i: int, n: int) -> int:
    info = ctypes.c_int(0)
    f["dpotrf"](b"L", _ref(_i(n)), m.at(i, i), _ref(m.ld), _ref(info))
    return info.value


def _trsm_rows(f, m: _Mat, j0: int, b: int, r0: int, rows: int):
    """``A[r0 : r0 + rows, j0 : j0 + b] := A[...] L_jj^-T``, ``L_jj`` the factored diagonal block at ``(j0, j0)``."""
    if rows <= 0:
        return
    f["dtrsm"](b"R", b"L", b"T", b"N", _ref(_i(rows)), _ref(_i(b)), _ref(_d(1.0)), m.at(j0, j0), _ref(m.ld),
               m.at(r0, j0), _ref(m.ld))


def _update_diag(f, m: _Mat, j0: int, b: int, t0: int, r: int, h: int):
    """The two diagonal blocks (``[t0, t0 + h)`` and ``[t0 + h, t0 + r)``) of ``A_tt -= L_tj L_tj'``."""
    for r0, rows in ((t0, h), (t0 + h, r - h)):
        if rows > 0:
            f["dsyrk"](b"L", b"N", _ref(_i(rows)), _ref(_i(b)), _ref(_d(-1.0)), m.at(r0, j0), _ref(m.ld),
                       _ref(_d(1.0)), m.at(r0, r0), _ref(m.ld))


def _update_off(f, m: _Mat, j0: int, b: int, t0: int, r: int, h: int):
    """The off-diagonal block (rows ``[t0 + h, t0 + r)``, columns ``[t0, t0 + h)``) of ``A_tt -= L_tj L_tj'``."""
    if h > 0 and r - h > 0:
        f["dgemm"](b"N", b"T", _ref(_i(r - h)), _ref(_i(h)), _ref(_i(b)), _ref(_d(-1.0)), m.at(t0 + h, j0),
                   _ref(m.ld), m.at(t0, j0), _ref(m.ld), _ref(_d(1.0)), m.at(t0 + h, t0), _ref(m.ld))


def potrf_lower(a: np.ndarray, workers: int = 1, split: int | None = None) -> tuple[np.ndarray, int]:
    """Lower Cholesky factor of ``a`` in place (its lower triangle; the strict upper triangle is not touched).

    With ``workers=2`` (and order at least ``SPLIT_MIN_ORDER``) a right-looking block Cholesky with diagonal
    blocks of order about ``POTRF_BLOCK``: for each, ``potrf`` of the diagonal block on this thread, the
    panel below it (``trsm``) by row halves on two threads, and the trailing update as two ``syrk`` on one
    thread and the ``gemm`` of its off-diagonal quarter on the other. The same flops as LAPACK ``potrf``
    (13.0 -> 7.8 ms at order 1,151 with a core idle). Equal to ``dpotrf``'s factor to rounding.

    Parameters
    ----------
    a : numpy.ndarray, shape (n, n), Fortran order, float64
    workers : int
        2: two threads (when a core is idle); 1: LAPACK ``dpotrf``.
    split : int, optional
        Order of the diagonal blocks (default: about ``POTRF_BLOCK``); for tests.

    Returns
    -------
    c : numpy.ndarray
        ``a`` itself, the factor in its lower triangle.
    info : int
        LAPACK's: 0 on success, ``j > 0`` where the leading minor of order ``j`` is not positive definite.

    Examples
    --------
    >>> import numpy as np
    >>> S = np.asfortranarray([[4.0, 2.0, 0.0], [2.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    >>> c, info = potrf_lower(S.copy(order="F"), workers=2, split=1)
    >>> bool(np.allclose(np.tril(c), np.linalg.cholesky(S))), info
    (True, 0)
    """
    n = a.shape[0]
    if split is None:
        k = -(-n // max(2, round(n / POTRF_BLOCK))) if n >= SPLIT_MIN_ORDER else n
    else:
        k = int(split)
    if (workers < 2 or not 0 < k < n or not a.flags.f_contiguous or a.dtype != np.float64 or a.shape != (n, n)
            or not split_available()):
        return lapack.dpotrf(a, lower=1, clean=0, overwrite_a=1)
    f = _load()
    m = _Mat(a)
    pool = _executor()
    # right-looking block Cholesky, blocks of order k: each diagonal block on this thread, the panel
    # below it (trsm, by row halves) and the trailing update (two syrk | one gemm) on both
    for j0 in range(0, n, k):
        b = min(k, n - j0)
        info = _potrf(f, m, j0, b)
        if info:
            return a, j0 + info
        t0 = j0 + b
        r = n - t0
        if r == 0:
            break
        h = r // 2
        job = pool.submit(_trsm_rows, f, m, j0, b, t0 + h, r - h)
        _trsm_rows(f, m, j0, b, t0, h)
        job.result()
        job = pool.submit(_update_off, f, m, j0, b, t0, r, h)
        _update_diag(f, m, j0, b, t0, r, h)
        job.result()
    return a, 0
