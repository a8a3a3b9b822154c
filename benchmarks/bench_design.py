"""Fixed costs of building a model (issue 13): model construction and design stage of small LMMs / GLMMs,
and the per-subject sufficient statistics of the 10,000,000-row LMM on 1 and 2 threads.

Usage::

    python benchmarks/bench_design.py                      # sleepstudy, Penicillin, Pastes, kb07, VerbAgg
    python benchmarks/bench_design.py --src /tmp/base/src  # the same with another checkout's memoe
    python benchmarks/bench_design.py --threads 1,2        # GroupSums pass at 10^7 rows, 10^6 subjects

Times are the median (and min) of ``--repeats`` runs after a warm-up run, wall clock
(``time.perf_counter``) and, for the threads, process CPU (``time.process_time``, all threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts), 1e3 * min(ts)


def small(repeats: int, tmp: str) -> None:
    import memoe
    from memoe.glmm.design import build_glmm_design
    from memoe.glmm.families import get_family
    from memoe.lmm.model import _build_lmm_design

    sys.path.insert(0, HERE)
    import lmm_workloads as wl
    from bench_glmm_speed import verbagg

    cases = [(name, *getattr(wl, name)(), "lmm") for name in ("sleepstudy", "penicillin", "pastes", "kb07")]
    cases.append(("verbagg", verbagg(tmp), "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "glmm"))
    print(f"{'workload':12s} {'model construction':>26s} {'design stage':>24s}   (ms: median (min) of {repeats})")
    for name, df, formula, kind in cases:
        if kind == "lmm":
            model = lambda df=df, f=formula: memoe.lmm(f, df)  # noqa: E731
            design = lambda df=df, f=formula: _build_lmm_design(f, df, None, None, None)  # noqa: E731
        else:
            fam = get_family("binomial")
            model = lambda df=df, f=formula: memoe.glmm(f, df, family="binomial")  # noqa: E731
            design = lambda df=df, f=formula, fam=fam: build_glmm_design(f, df, fam)  # noqa: E731
        m, mmin = _timed(model, repeats)
        d, dmin = _timed(design, repeats)
        print(f"{name:12s} {m:17.2f} ({mmin:5.2f}) {d:15.2f} ({dmin:5.2f})")


def threads(settings: list[str], repeats: int) -> None:
    from memoe.core.linalg.sufficient import GroupSums

    N, visits = 1_000_000, 10
    rng = np.random.default_rng(1)
    codes = np.repeat(np.arange(N), visits)
    n = N * visits
    t = np.tile(np.arange(visits, dtype=float), N)
    x, y, one = rng.normal(size=n), rng.normal(size=n), np.ones(n)
    ref = None
    for th in settings:
        os.environ["MEMOE_THREADS"] = th
        walls, cpus = [], []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            s = GroupSums(codes, N)
            s.prepare([one, t, x, y])
            out = (s.cross([one, t]), s.cross([one, t], [one, t, x, y]))
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        same = "" if ref is None else f", identical to {settings[0]} thread(s): " + str(
            all(np.array_equal(a, b) for a, b in zip(ref, out, strict=True)))
        ref = ref or out
        print(f"MEMOE_THREADS={th}: wall {1e3 * statistics.median(walls):.0f} ms (min {1e3 * min(walls):.0f}), "
              f"CPU {1e3 * statistics.median(cpus):.0f} ms{same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--src", default=None, help="import memoe from this src directory")
    ap.add_argument("--threads", default=None, help="e.g. 1,2: time the sufficient statistics instead")
    ap.add_argument("--tmp", default="/tmp")
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    warnings.simplefilter("ignore")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    if args.threads:
        threads(args.threads.split(","), max(3, args.repeats // 4))
    else:
        small(args.repeats, args.tmp)


if __name__ == "__main__":
    main()
