"""Per-phase wall time of small LMM fits (issue 13): design, set-up, start, optimiser, check, result.

Each phase function of ``memoe.lmm(...).fit()`` is wrapped with a timer; the median and min over
``--repeats`` fits after a warm-up are printed. Run against another tree with ``PYTHONPATH=<its src>``.

    python benchmarks/bench_small_phases.py --workloads penicillin,pastes,kb07 --repeats 60
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import sys
import time
import warnings

from lmm_workloads import SIMULATORS

import memoe

PHASES = [
    ("memoe.lmm.model", None, "_build_lmm_design", "design (formula, frame, X, Z)"),
    ("memoe.lmm.objective", "PLSProblem", "__init__", "set-up (PLSProblem)"),
    ("memoe.lmm.model", None, "variance_component_start", "start (MIVQUE0)"),
    ("memoe.lmm.model", "LMM", "_minimize_gradient", "optimiser (BFGS)"),
    ("memoe.lmm.model", None, "minimize_bounded", "optimiser (BOBYQA)"),
    ("memoe.lmm.model", "LMM", "_check_gradient", "check (gradient)"),
    ("memoe.lmm.model", "LMM", "_check", "check (finite differences)"),
    ("memoe.lmm.model", "LMM", "_result", "result"),
]


def _wrap(acc: dict) -> None:
    for module, cls, name, label in PHASES:
        owner = sys.modules[module] if cls is None else getattr(sys.modules[module], cls)
        f = getattr(owner, name, None)
        if f is None:
            continue

        def timed(*a, _f=f, _label=label, **k):
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                acc[_label] += time.perf_counter() - t0

        setattr(owner, name, functools.wraps(f)(timed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="penicillin,pastes")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--optimizer", default="auto", choices=("auto", "bobyqa"))
    args = ap.parse_args()
    acc: dict = collections.defaultdict(float)
    _wrap(acc)
    warnings.simplefilter("ignore")
    control = {"optimizer": args.optimizer}
    for name in args.workloads.split(","):
        df, formula = SIMULATORS[name]()
        memoe.lmm(formula, df).fit(control=control)
        rows, tot = collections.defaultdict(list), []
        for _ in range(args.repeats):
            acc.clear()
            t0 = time.perf_counter()
            fit = memoe.lmm(formula, df).fit(control=control)
            tot.append(time.perf_counter() - t0)
            for k, v in acc.items():
                rows[k].append(v)
        print(f"{name}: total median {statistics.median(tot) * 1e3:.2f} ms, min {min(tot) * 1e3:.2f} ms; "
              f"{fit.opt.feval} evaluations ({fit.opt.optimizer})")
        for k, v in rows.items():
            print(f"   {k:32s} median {statistics.median(v) * 1e3:7.2f} ms  min {min(v) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
