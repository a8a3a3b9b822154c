"""Command line: ``memoe demo``, ``memoe fit``, ``memoe datasets``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import pandas as pd

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import memoe

    df = memoe.datasets.load("sleepstudy")
    print("memoe demo 1/2: linear mixed model on the bundled sleepstudy data (lme4's example)\n")
    print(">>> fit = memoe.lmm('Reaction ~ Days + (Days | Subject)', data=df).fit(reml=True)")
    t0 = time.perf_counter()
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", data=df).fit(reml=True)
    elapsed = time.perf_counter() - t0
    print(fit.summary())
    print(f"(fitted in {elapsed:.3f} s)\n")
    if not hasattr(memoe, "MEMoE"):
        return 0
    sim = memoe.datasets.load("memoe_sim2")
    print("memoe demo 2/2: mixture of LMM experts on the bundled memoe_sim2 data (K = 2, gate on w1, w2)\n")
    print(">>> m = memoe.MEMoE('y ~ time + x + (time | id)', gating='~ w1 + w2', k=2, data=sim)")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim)
        mfit = m.fit(n_starts=args.starts, seed=1)
    elapsed = time.perf_counter() - t0
    print(mfit.summary())
    print(f"(fitted with {args.starts} starts in {elapsed:.2f} s)")
    return 0


def _fit(args: argparse.Namespace) -> int:
    import memoe

    df = pd.read_csv(args.data)
    fit = memoe.lmm(args.formula, data=df).fit(reml=not args.ml)
    print(fit.summary())
    return 0


def _datasets(args: argparse.Namespace) -> int:
    import memoe

    for name in memoe.datasets.names():
        meta = memoe.datasets.describe(name)
        print(f"{name:12s} {meta['nrow']:6d} rows  {meta.get('source') or ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``memoe`` command."""
    parser = argparse.ArgumentParser(prog="memoe", description="Mixed-effects models and mixtures of LMM experts")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="fit the bundled example data and print the summaries")
    p_demo.add_argument("--starts", type=int, default=10, help="EM starts for the MEMoE demo")
    p_demo.set_defaults(func=_demo)
    p_fit = sub.add_parser("fit", help="fit an LMM to a CSV file")
    p_fit.add_argument("formula", help="lme4 formula, e.g. 'y ~ t + (t | id)'")
    p_fit.add_argument("--data", required=True, help="CSV file")
    p_fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    p_fit.set_defaults(func=_fit)
    p_ds = sub.add_parser("datasets", help="list the bundled data sets")
    p_ds.set_defaults(func=_datasets)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # a command-line user wants the message, not a traceback
        from memoe.errors import MemoeError

        if isinstance(exc, MemoeError | FileNotFoundError):
            print(f"memoe: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
