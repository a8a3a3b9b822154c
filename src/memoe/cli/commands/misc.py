"""``memoe demo`` and ``memoe datasets``."""

from __future__ import annotations

import argparse
import time
import warnings
from importlib import resources

from memoe.cli.commands.common import progress_flag
from memoe.cli.io import write_table
from memoe.errors import ArgumentError

__all__ = ["cmd_datasets", "cmd_demo", "dataset_path"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Fit the bundled sleepstudy LMM and the memoe_sim2 mixture, printing the summaries."""
    import memoe

    df = memoe.datasets.load("sleepstudy")
    print("memoe demo 1/2: linear mixed model on the bundled sleepstudy data (lme4's example)\n")
    print(">>> fit = memoe.lmm('Reaction ~ Days + (Days | Subject)', data=df).fit(reml=True)")
    t0 = time.perf_counter()
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", data=df).fit(reml=True)
    elapsed = time.perf_counter() - t0
    print(fit.summary())
    print(f"(fitted in {elapsed:.3f} s)\n")
    sim = memoe.datasets.load("memoe_sim2")
    print("memoe demo 2/2: mixture of LMM experts on the bundled memoe_sim2 data (K = 2, gate on w1, w2)\n")
    print(">>> m = memoe.MEMoE('y ~ time + x + (time | id)', gating='~ w1 + w2', k=2, data=sim)")
    print(f">>> fit = m.fit(n_starts={args.starts}, seed=1)")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # the demo shows the summary; EM's per-start convergence notes would bury it
        warnings.simplefilter("ignore")
        m = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim)
        mfit = m.fit(n_starts=args.starts, seed=1, progress=progress_flag(args))
    elapsed = time.perf_counter() - t0
    print(mfit.summary())
    print(f"(fitted with {args.starts} start{'s' if args.starts != 1 else ''} in {elapsed:.2f} s)")
    return 0


def dataset_path(name: str) -> str:
    """The path of a bundled data set's file inside the installed ``memoe.datasets`` package."""
    import memoe

    meta = memoe.datasets.describe(name)
    return str(resources.files(memoe.datasets) / "data" / meta["file"])


def cmd_datasets(args: argparse.Namespace) -> int:
    """List the bundled data sets (name, rows, file inside the package), or ``--export NAME FILE``."""
    import memoe

    if args.export:
        name, path = args.export
        if name not in memoe.datasets.names():
            raise ArgumentError(f"--export: unknown data set {name!r}; available: {', '.join(memoe.datasets.names())}")
        # Parquet / Feather keep the factor columns as categoricals in R's level order; CSV writes their labels
        write_table(memoe.datasets.load(name), path, "--export")
        if not args.quiet:
            print(f"wrote {name} ({memoe.datasets.describe(name)['nrow']} rows) to {path}")
        return 0
    for name in memoe.datasets.names():
        meta = memoe.datasets.describe(name)
        factors = ",".join(meta.get("factors", {}))
        print(f"{name:12s} {meta['nrow']:6d} rows  {dataset_path(name)}" + (f"  factors: {factors}" if factors else ""))
    return 0
