"""Bound-constrained derivative-free minimisation (BOBYQA from nlopt), as lme4's nloptwrap."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nlopt
import numpy as np

from memoe.core.optim.progress import EvaluationBar

__all__ = ["OptSummary", "minimize_bounded"]

_RESULT_NAMES = {
    1: "success",
    2: "stopval reached",
    3: "ftol reached",
    4: "xtol reached",
    5: "maxeval reached",
    6: "maxtime reached",
    -1: "failure",
    -2: "invalid arguments",
    -3: "out of memory",
    -4: "roundoff limited",
    -5: "forced stop",
}


@dataclass(frozen=True)
class OptSummary:
    """What the optimiser did.

    Attributes
    ----------
    optimizer : str
    x0, x : numpy.ndarray
        Start and optimum.
    fmin : float
        Objective at ``x``.
    feval : int
        Objective evaluations.
    return_code : int
        nlopt's code (positive = stopped by a tolerance).
    message : str
    seconds : float
    settings : dict
    """

    optimizer: str
    x0: np.ndarray
    x: np.ndarray
    fmin: float
    feval: int
    return_code: int
    message: str
    seconds: float
    settings: dict = field(default_factory=dict)


def minimize_bounded(
    fun: Callable[[np.ndarray], float],
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray | None = None,
    *,
    ftol_abs: float = 1e-12,
    ftol_rel: float = 1e-15,
    xtol_abs: float = 1e-10,
    xtol_rel: float = 0.0,
    maxeval: int = 100_000,
    initial_step: float | np.ndarray | None = None,
    progress: bool | None = False,
    desc: str = "optimising",
) -> OptSummary:
    """Minimise ``fun`` subject to ``lower <= x <= upper`` with BOBYQA.

    The default tolerances are those of lme4's "tight" refits (lme4's defaults stop short of the
    optimum by up to 1e-3 in theta on flat ridges); the objective here is cheap enough to afford them.
    ``progress`` (True, False, or None for "when stderr is a terminal") shows a bar of evaluations
    labelled ``desc`` once the run has lasted a couple of seconds (:mod:`memoe.core.optim.progress`).
    """
    x0 = np.asarray(x0, dtype=float)
    k = len(x0)
    lower = np.asarray(lower, dtype=float)
    upper = np.full(k, np.inf) if upper is None else np.asarray(upper, dtype=float)
    count = 0
    best = [np.inf, x0.copy()]

    def wrapped(x, grad):
        nonlocal count
        count += 1
        v = float(fun(x))
        if not math.isfinite(v):  # math, not numpy: a few microseconds of a ~20 us evaluation
            v = 1e300
        if v < best[0]:
            best[0], best[1] = v, x.copy()
        bar.update(best[0])
        return v

    t0 = time.perf_counter()
    if k == 0:
        v = float(fun(x0))
        return OptSummary("none", x0, x0, v, 1, 1, "no parameters", time.perf_counter() - t0)
    # nlopt's BOBYQA also handles a single parameter (2k + 1 = 3 interpolation points)
    opt = nlopt.opt(nlopt.LN_BOBYQA, k)
    opt.set_min_objective(wrapped)
    lb = np.where(np.isfinite(lower), lower, -np.inf)
    opt.set_lower_bounds(lb)
    opt.set_upper_bounds(upper)
    opt.set_ftol_abs(ftol_abs)
    opt.set_ftol_rel(ftol_rel)
    opt.set_xtol_abs(xtol_abs)
    opt.set_xtol_rel(xtol_rel)
    opt.set_maxeval(maxeval)
    if initial_step is not None:
        # a scalar or one step per parameter (nlopt rescales the variables accordingly)
        opt.set_initial_step(np.broadcast_to(np.asarray(initial_step, dtype=float), (k,)).copy())
    start = np.clip(x0, lb, upper)
    bar = EvaluationBar(progress, desc)
    try:
        x = opt.optimize(start)
        code = opt.last_optimize_result()
    except nlopt.RoundoffLimited:
        x, code = best[1], -4
    except (RuntimeError, ValueError) as exc:  # nlopt failure: keep the best point seen
        x, code = best[1], -1
        _ = exc
    finally:
        bar.close()
    x = np.asarray(x, dtype=float)
    # nlopt returns the best point it evaluated; re-evaluate only if it is not the one recorded
    fmin = best[0] if best[0] < 1e300 and np.array_equal(x, best[1]) else float(fun(x))
    if best[0] < fmin:
        x, fmin = best[1], best[0]
    return OptSummary(
        optimizer="nlopt LN_BOBYQA",
        x0=x0,
        x=np.asarray(x, dtype=float),
        fmin=fmin,
        feval=count,
        return_code=int(code),
        message=_RESULT_NAMES.get(int(code), str(code)),
        seconds=time.perf_counter() - t0,
        settings=dict(ftol_abs=ftol_abs, ftol_rel=ftol_rel, xtol_abs=xtol_abs, xtol_rel=xtol_rel, maxeval=maxeval),
    )
