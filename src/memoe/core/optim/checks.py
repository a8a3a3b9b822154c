"""Convergence checks at an optimum, as lme4's checkConv: scaled gradient and Hessian."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from memoe.core.linalg.threads import pooled
from memoe.errors import ArgumentError

# shortest usable secant step, in units of the difference step (gradient_difference_hessian)
SECANT_MIN = 0.01

__all__ = [
    "ConvergenceReport", "check_convergence", "finite_difference_derivatives", "gradient_difference_hessian",
    "parallel_map", "value_difference_hessian", "value_stencil_points",
]


def gradient_difference_hessian(
    grad: Callable[[np.ndarray], np.ndarray], x: np.ndarray, g0: np.ndarray, delta: float = 1e-4, workers: int = 1,
    secant: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Hessian from ``k`` forward differences of an analytic gradient, symmetrised.

    Parameters
    ----------
    grad : callable
        ``x -> gradient`` (shape (k,)).
    x : numpy.ndarray, shape (k,)
    g0 : numpy.ndarray, shape (k,)
        ``grad(x)``.
    delta : float
        Step ``h``; always forward (``x + h e_i``), so a lower bound at ``x`` is never crossed.
    workers : int
        Threads evaluating the ``k`` independent gradients (this one included). ``grad`` must then be
        safe to call concurrently; each column is computed exactly as serially, so the result is the
        same to the last bit. Pays when ``grad`` spends its time in code that releases the GIL
        (LAPACK, large NumPy operations) and a core is free (:func:`memoe.core.linalg.threads.idle_cores`).
    secant : (s, y), optional
        A gradient difference the caller already has: ``y = g0 - grad(x - s)``, e.g. from the optimiser's
        last step. Used in place of the coordinate direction ``i`` where ``|s_i|`` is largest when
        ``SECANT_MIN * delta <= max|s| <= 2 delta``: its midpoint is within ``delta`` of ``x`` like the columns'
        (same truncation), and its rounding, ``eps_g / |s|`` for a gradient computed to ``eps_g``, at most 100x
        a column's (~1e-10 of the Hessian for the profiled criterion, whose gradient is exact to ~1e-14 relative),
        saving one evaluation; ignored otherwise. The Hessian is then ``Y D^-1`` (symmetrised) for the
        directions ``D = [s, delta e_j (j != i)]`` and their gradient differences ``Y``.

    Returns
    -------
    numpy.ndarray, shape (k, k)
        ``(H + H') / 2`` with column i ``(grad(x + h e_i) - g0) / h``: ``k`` evaluations against
        ``2k + k (k - 1) / 2`` values for :func:`finite_difference_derivatives`, and truncation error
        ``O(h)`` of the third derivative without the ``eps |f| / h^2`` rounding of second value differences.

    R equivalent
    ------------
    ``numDeriv::jacobian(grad, x, method = "simple")`` symmetrised; lme4's ``deriv12`` differences values.

    Examples
    --------
    >>> import numpy as np
    >>> H = gradient_difference_hessian(lambda t: np.array([2 * t[0] + t[1], t[0] + 6 * t[1]]),
    ...                                 np.array([1.0, 2.0]), np.array([4.0, 13.0]))
    >>> np.round(H, 6).tolist()
    [[2.0, 1.0], [1.0, 6.0]]
    """
    x = np.asarray(x, dtype=float)
    k = len(x)
    H = np.empty((k, k))
    use = secant_usable(secant, delta)
    skip = int(np.argmax(np.abs(secant[0]))) if use else -1

    def column(i: int) -> None:
        e = np.zeros(k)
        e[i] = delta
        H[:, i] = (np.asarray(grad(x + e), dtype=float) - g0) / delta

    parallel_map(column, [i for i in range(k) if i != skip], workers)
    if use:
        # columns j != skip hold H e_j; the secant gives H s, so H e_skip = (y - sum_{j != skip} s_j H e_j) / s_skip
        sv, yv = (np.asarray(a, dtype=float) for a in secant)
        others = np.arange(k) != skip
        H[:, skip] = (yv - H[:, others] @ sv[others]) / sv[skip]
    return 0.5 * (H + H.T)


def value_stencil_points(x: np.ndarray, delta: float, dirs=None, pairs: bool = True) -> list[np.ndarray]:
    """The points :func:`value_difference_hessian` evaluates: ``x + h e_i``, then ``x + h (e_i + e_j)`` (j < i;
    not without ``pairs``), for ``i, j`` in ``dirs`` (default: all coordinates).

    Built exactly as it builds them (same bytes), so that a caller can evaluate them beforehand (pooled).

    Examples
    --------
    >>> [p.tolist() for p in value_stencil_points(np.array([1.0, 2.0]), 0.5)]
    [[1.5, 2.0], [1.0, 2.5], [1.5, 2.5]]
    """
    x = np.asarray(x, dtype=float)
    k = len(x)
    dirs = list(range(k)) if dirs is None else list(dirs)
    points = []
    for i in dirs:
        e = np.zeros(k)
        e[i] = delta
        points.append(x + e)
    for a, i in enumerate(dirs if pairs else []):
        for j in dirs[:a]:
            e = np.zeros(k)
            e[i] = e[j] = delta
            points.append(x + e)
    return points


def value_difference_hessian(f: Callable[[np.ndarray], float], x: np.ndarray, f0: float, g0: np.ndarray,
                             delta: float, secant: tuple[np.ndarray, np.ndarray] | None = None,
                             workers: int = 1, diagonal: bool = False) -> np.ndarray:
    """Hessian from forward values and a known gradient (``k (k + 1) / 2`` values, fewer with a secant).

    ``H_ii = 2 (f(x + h e_i) - f0 - h g_i) / h^2`` and ``H_ij = (f(x + h e_i + h e_j) - f(x + h e_i) -
    f(x + h e_j) + f0) / h^2``: truncation ``O(h)`` of the third derivative, as :func:`gradient_difference_hessian`'s
    forward differences, and rounding ``~eps_f / h^2`` for a criterion computed to ``eps_f`` (for the profiled
    criterion, ``~1e-13 |f|`` with ``|f| ~ 10^5`` and ``h = 10^-4``: ~1e-4 of a curvature of ~10^4). Forward steps
    only, so a lower bound at ``x`` is never crossed. Used where a value costs much less than a value and its
    gradient (the dense crossed LMM path: no ``potri``): the start Hessian of the quasi-Newton optimiser and
    the derivative check's (lme4's ``deriv12`` differences values too).

    Parameters
    ----------
    f : callable
        ``x -> f(x)``, evaluated at :func:`value_stencil_points` (safe to call concurrently with ``workers=2``).
    x : numpy.ndarray, shape (k,)
    f0 : float
        ``f(x)``.
    g0 : numpy.ndarray, shape (k,)
        The gradient at ``x``.
    delta : float
        Step ``h``.
    secant : (s, y), optional
        A gradient difference ``y = g0 - grad(x - s)`` the caller has (see :func:`gradient_difference_hessian`;
        used when :func:`secant_usable`): the direction ``i`` of the largest ``|s_i|`` then needs no values, its
        row and column come from ``H s = y`` (``m (m + 1) / 2`` values for the ``m = k - 1`` others: 3 for k = 3).
    workers : int
        Threads evaluating the values (this one included); the result does not depend on it.
    diagonal : bool
        Only the diagonal (``k`` values, off-diagonal entries 0; no secant): a start Hessian for a quasi-Newton
        method, which learns the rest from its steps.

    Returns
    -------
    numpy.ndarray, shape (k, k)
        Symmetric; non-finite entries where a value is not finite.

    R equivalent
    ------------
    ``numDeriv::hessian(f, x, method = "simple")`` with the analytic gradient in place of the first differences.

    Examples
    --------
    >>> import numpy as np
    >>> fq = lambda t: t[0] ** 2 + t[0] * t[1] + 3 * t[1] ** 2
    >>> x = np.array([1.0, 2.0])
    >>> H = value_difference_hessian(fq, x, fq(x), np.array([4.0, 13.0]), 1e-3)
    >>> np.round(H, 6).tolist()
    [[2.0, 1.0], [1.0, 6.0]]
    """
    x = np.asarray(x, dtype=float)
    g0 = np.asarray(g0, dtype=float)
    k = len(x)
    use = secant_usable(secant, delta) and not diagonal
    skip = int(np.argmax(np.abs(np.asarray(secant[0], dtype=float)))) if use else -1
    dirs = [i for i in range(k) if i != skip]
    points = value_stencil_points(x, delta, dirs, pairs=not diagonal)
    vals = [math.nan] * len(points)

    def run(t: int) -> None:
        vals[t] = float(f(points[t]))

    parallel_map(run, range(len(points)), workers)
    H = np.zeros((k, k)) if diagonal else np.empty((k, k))
    m = len(dirs)
    fi = dict(zip(dirs, vals[:m], strict=True))
    for i in dirs:
        H[i, i] = 2.0 * (fi[i] - f0 - delta * g0[i]) / delta**2
    t = m
    for a, i in enumerate(dirs if not diagonal else []):
        for j in dirs[:a]:
            H[i, j] = H[j, i] = (vals[t] - fi[i] - fi[j] + f0) / delta**2
            t += 1
    if use:
        # H s = y: the rows of the other directions give column skip, then its diagonal entry
        sv, yv = (np.asarray(a, dtype=float) for a in secant)
        o = np.array(dirs, dtype=int)
        H[o, skip] = H[skip, o] = (yv[o] - H[np.ix_(o, o)] @ sv[o]) / sv[skip]
        H[skip, skip] = (yv[skip] - H[skip, o] @ sv[o]) / sv[skip]
    return H


def secant_usable(secant: tuple[np.ndarray, np.ndarray] | None, delta: float) -> bool:
    """Whether :func:`gradient_difference_hessian` can use ``secant``: finite, step in ``[SECANT_MIN, 2] delta``."""
    if secant is None:
        return False
    sv, yv = (np.asarray(a, dtype=float) for a in secant)
    if not (np.all(np.isfinite(sv)) and np.all(np.isfinite(yv))):
        return False
    step = float(np.max(np.abs(sv))) if len(sv) else 0.0
    return SECANT_MIN * delta <= step <= 2.0 * delta


def parallel_map(fn: Callable[[int], None], items, workers: int) -> None:
    """Call ``fn(i)`` for every item, on this thread and ``workers - 1`` pool threads pulling from one queue.

    Serial (in order, no thread started) when ``workers <= 1`` or there is at most one item. The first
    exception raised by any call is re-raised here after all threads stopped.

    Examples
    --------
    >>> out = []
    >>> parallel_map(out.append, range(3), workers=1)
    >>> out
    [0, 1, 2]
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for i in items:
            fn(i)
        return
    lock = threading.Lock()
    queue = iter(items)
    failed: list[BaseException] = []

    def drain() -> None:
        while True:
            with lock:
                if failed:
                    return
                i = next(queue, _END)
            if i is _END:
                return
            try:
                fn(i)
            except BaseException as exc:  # re-raised on the calling thread below
                with lock:
                    failed.append(exc)
                return

    with pooled(), ThreadPoolExecutor(max_workers=min(workers, len(items)) - 1) as pool:
        futures = [pool.submit(drain) for _ in range(min(workers, len(items)) - 1)]
        drain()
        for f in futures:
            f.result()
    if failed:
        raise failed[0]


_END = object()


def finite_difference_derivatives(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    lower: np.ndarray,
    delta: float = 1e-4,
    f0: float | None = None,
    mixed: str = "central",
) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient and Hessian (one-sided at a lower bound), as lme4's deriv12.

    Parameters
    ----------
    fun : callable
    x : numpy.ndarray, shape (k,)
    lower : numpy.ndarray, shape (k,)
    delta : float
        Step ``h``.
    f0 : float, optional
        ``fun(x)`` when already known (saves one evaluation).
    mixed : {"central", "forward"}
        How the off-diagonal entries are differenced. "central" (two evaluations per pair,
        ``f(x + h e_i + h e_j)`` and ``f(x - h e_i - h e_j)``, error O(h^2)) for Hessians that feed
        standard errors; "forward" (one evaluation per pair, ``(f_{++} - f_{i+} - f_{j+} + f_0) / h^2``,
        error ``h (f_iij + f_ijj) / 2``) for convergence checks: with h = 1e-4 the rounding error of any
        second difference, about ``4 eps |f| / h^2`` (0.3 for a deviance of 3e4), is usually larger than
        that truncation error, so the checks see the same matrix.

    Returns
    -------
    gradient : numpy.ndarray, shape (k,)
    hessian : numpy.ndarray, shape (k, k)

    Notes
    -----
    Evaluations: ``2k`` for the gradient and diagonal (the same points as lme4's ``deriv12``), then
    ``k (k - 1)`` ("central") or ``k (k - 1) / 2`` ("forward") for the off-diagonal entries. lme4's
    ``deriv12`` takes ``2k + 2k (k - 1)`` (four points per pair): 288 for k = 12 against 156 and 90.

    R equivalent
    ------------
    ``lme4:::deriv12(fun, x, delta = 1e-4, fx = f0, lower = lower)`` (lme4's ``calc.derivs``).

    Examples
    --------
    >>> import numpy as np
    >>> g, H = finite_difference_derivatives(lambda t: float(t @ t), np.array([1.0, 2.0]), np.zeros(2), mixed="forward")
    >>> np.round(g, 6).tolist(), np.round(H, 4).tolist()
    ([2.0, 4.0], [[2.0, 0.0], [0.0, 2.0]])
    """
    if mixed not in ("central", "forward"):
        raise ArgumentError(f"mixed must be 'central' or 'forward', got {mixed!r}")
    x = np.asarray(x, dtype=float)
    k = len(x)
    if f0 is None:
        f0 = fun(x)
    grad = np.zeros(k)
    hess = np.zeros((k, k))
    h = np.full(k, delta)
    fp = np.zeros(k)
    fm = np.zeros(k)
    forward = x - h < lower
    for i in range(k):
        e = np.zeros(k)
        e[i] = h[i]
        if forward[i]:
            f1, f2 = fun(x + e), fun(x + 2 * e)
            grad[i] = (-3 * f0 + 4 * f1 - f2) / (2 * h[i])
            hess[i, i] = (f0 - 2 * f1 + f2) / h[i] ** 2
            fp[i], fm[i] = f1, np.nan
        else:
            fp[i], fm[i] = fun(x + e), fun(x - e)
            grad[i] = (fp[i] - fm[i]) / (2 * h[i])
            hess[i, i] = (fp[i] - 2 * f0 + fm[i]) / h[i] ** 2
    for i in range(k):
        for j in range(i):
            ei = np.zeros(k)
            ej = np.zeros(k)
            ei[i], ej[j] = h[i], h[j]
            if forward[i] or forward[j] or mixed == "forward":
                fij = fun(x + ei + ej)
                hij = (fij - fp[i] - fp[j] + f0) / (h[i] * h[j])
            else:
                fpp, fmm = fun(x + ei + ej), fun(x - ei - ej)
                hij = (fpp - fp[i] - fp[j] + 2 * f0 - fm[i] - fm[j] + fmm) / (2 * h[i] * h[j])
            hess[i, j] = hess[j, i] = hij
    return grad, hess


@dataclass(frozen=True)
class ConvergenceReport:
    """Outcome of the convergence checks.

    Attributes
    ----------
    converged : bool
    messages : list of str
        lme4-style messages, empty when all checks pass.
    gradient, hessian : numpy.ndarray
        Finite-difference derivatives of the objective at the optimum.
    max_scaled_gradient : float
        ``max |H^-1/2 g|`` over the free (non-boundary) parameters.
    """

    converged: bool
    messages: list[str] = field(default_factory=list)
    gradient: np.ndarray | None = None
    hessian: np.ndarray | None = None
    max_scaled_gradient: float = 0.0


def check_convergence(
    gradient: np.ndarray,
    hessian: np.ndarray,
    free: np.ndarray,
    grad_tol: float = 2e-3,
    eigen_ratio_tol: float = 1e6,
) -> ConvergenceReport:
    """lme4's checks on the free parameters: scaled gradient below ``grad_tol``, Hessian positive definite."""
    messages: list[str] = []
    g = gradient[free]
    H = hessian[np.ix_(free, free)]
    scaled = 0.0
    if len(g) and not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
        # the deviance is infinite or undefined next to the optimum (e.g. a factorisation failed):
        # there is no Hessian to check, which is itself a convergence failure, not a LinAlgError
        messages.append(
            "Model failed to converge: the objective is not finite around the estimates, so the gradient and "
            "Hessian cannot be checked (rescale or centre the variables?)"
        )
        return ConvergenceReport(converged=False, messages=messages, gradient=gradient, hessian=hessian,
                                 max_scaled_gradient=math.inf)
    if len(g):
        try:
            R = np.linalg.cholesky(H)
            scaled = float(np.max(np.abs(np.linalg.solve(R, g))))
        except np.linalg.LinAlgError:
            scaled = float(np.max(np.abs(g)))
        if scaled > grad_tol:
            messages.append(f"Model failed to converge with max|grad| = {scaled:.6g} (tol = {grad_tol:g})")
        ev = np.linalg.eigvalsh(H)
        nneg = int((ev < 0).sum())
        if nneg:
            messages.append(f"Model failed to converge: degenerate Hessian with {nneg} negative eigenvalues")
        elif ev.max() > 0 and ev.min() > 0 and ev.max() / ev.min() > eigen_ratio_tol:
            messages.append(
                "Model is nearly unidentifiable: very large eigenvalue ratio "
                f"({ev.max() / ev.min():.3g}) - rescale variables?"
            )
    return ConvergenceReport(
        converged=not messages, messages=messages, gradient=gradient, hessian=hessian, max_scaled_gradient=scaled
    )
