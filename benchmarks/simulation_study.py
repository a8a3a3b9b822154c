"""Paper-style simulation study: MEMoE against a single LMM, a conventional MoE and a latent-class LMM.

Usage::

    python benchmarks/simulation_study.py [--reps 100] [--scenarios normal t3 k3] [--n-starts 5]
                                          [--n-jobs 2] [--out benchmarks/simulation_results.csv]

The loop lives in the package (``memoe.simulation_study``, :mod:`memoe.moe.simulation`); this script runs
the named scenarios (``memoe.moe.simulation.SCENARIOS``) and prints the results as markdown tables for
``benchmarks/README.md``:

* ``normal``: K = 2 (the memoe_sim2 parameters), 300 subjects, 4-8 irregular visits;
* ``t3``: the same with multivariate t (3 df) random effects scaled to the same covariance, a
  misspecified model for which the sandwich SEs should keep their coverage;
* ``k3``: K = 3, 500 subjects, 4-8 visits.

Models: MEMoE (gate ``~ w1 + w2``), LMM (one expert), MoE (regression experts, same gate), LCLMM (LMM
experts, constant class proportions). Experts are matched to the truth (``memoe.metrics.match_labels``)
before bias, RMSE and coverage are computed.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

import memoe
from memoe.moe.simulation import SCENARIOS

LABEL = {"memoe": "MEMoE", "lmm": "LMM", "moe": "MoE", "lclmm": "LCLMM"}


def _f(v: float, fmt: str) -> str:
    return "-" if v is None or not np.isfinite(v) else format(v, fmt)


def markdown(study) -> str:
    """The study as the two markdown tables of benchmarks/README.md."""
    cls, bic = study.classification, study.bic_share
    secs = study.fits[~study.fits["failed"]].groupby("model")["seconds"].mean()
    lines = [
        f"\n### Scenario `{study.scenario.name}` ({study.reps} replications)\n",
        "| model | accuracy | ARI | mean BIC | lowest BIC (share) | mean fit s |",
        "|---|---|---|---|---|---|",
    ]
    for m in bic.index:
        acc = "-" if m == "lmm" else _f(cls.at[m, "accuracy"], ".3f")
        ari = "-" if m == "lmm" else _f(cls.at[m, "ari"], ".3f")
        lines.append(f"| {LABEL[m]} | {acc} | {ari} | {bic.at[m, 'mean_bic']:.1f} | "
                     f"{bic.at[m, 'lowest_bic_share']:.2f} | {secs[m]:.2f} |")
    p = study.parameters
    lines += ["", "| parameter | truth | MEMoE bias | MEMoE RMSE | LCLMM bias | MoE bias | MoE RMSE | cover model "
              "| cover sandwich |", "|---|---|---|---|---|---|---|---|---|"]
    mem = p.loc["memoe"]

    def get(model: str, par: str, col: str) -> float | None:
        return p.at[(model, par), col] if (model, par) in p.index else None

    for par, r in mem.iterrows():
        lines.append(
            f"| {par} | {r['truth']:g} | {r['bias']:+.3f} | {r['rmse']:.3f} | {_f(get('lclmm', par, 'bias'), '+.3f')} "
            f"| {_f(get('moe', par, 'bias'), '+.3f')} | {_f(get('moe', par, 'rmse'), '.3f')} "
            f"| {r['coverage_model']:.2f} | {r['coverage_sandwich']:.2f} |"
        )
    cov = study.coverage.loc["memoe"]
    lines.append(f"| **all MEMoE parameters** | | | | | | | **{cov['coverage_model']:.3f}** | "
                 f"**{cov['coverage_sandwich']:.3f}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--n-starts", type=int, default=5)
    ap.add_argument("--n-jobs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the per-replication estimates as CSV")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    frames = []
    for name in args.scenarios:
        study = memoe.simulation_study(name, reps=args.reps, seed=args.seed, n_starts=args.n_starts,
                                       n_jobs=args.n_jobs, progress=True)
        print(f"{name}: {args.reps} replications done after {time.perf_counter() - t0:.0f} s", flush=True)
        print(markdown(study), flush=True)
        frames.append(study.estimates.assign(scenario=name))
    if args.out:
        pd.concat(frames).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
