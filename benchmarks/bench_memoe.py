"""Time MEMoE fits against the flexmix anchors (shared/ANCHORS.md, reference/memoe_sim2).

Usage::

    python benchmarks/bench_memoe.py [--repeat 3] [--skip-large] [--subjects 100000]

Workloads (data from ``memoe.simulate.memoe_data``, K = 3 defaults, 6 visits per subject):

* ``em_2000``: one EM run to convergence, N = 2,000 subjects, K = 3, from the k-means start:
  (a) ``MEMoE.fit(n_starts=1)`` (model build, EM, BFGS finish; no SEs) and (b) plain EM with the
  strict stopping rule (relative log-likelihood change < 1e-10 and parameter change < 1e-6).
  flexmix: 351 s (200 iterations, its limit).
* ``fit_10000``: the full 20-start fit, N = 10,000, K = 3 (exploratory runs, the best 3 to
  convergence), then the standard errors (observed information + sandwich) separately.
  flexmix: about 65 s per EM iteration at K = 2.
* ``--subjects N``: only the 20-start fit above at N subjects (issue 12's target: N = 100,000 in
  at most 120 s on 2 cores); also prints process CPU time and the cost per EM iteration (wall and
  CPU seconds divided by the EM iterations of all starts), less sensitive to the machine's load.
* ``--mstep bobyqa``: the M-step before issue 12's second speed pass (BOBYQA on the weighted profiled
  deviance, <= 20 evaluations per exploratory M-step, the gate's Newton iterations to convergence),
  for before/after comparisons in one code base; the default is the current Fisher-scoring M-step.
* ``sim2``: the reference case (N = 300, K = 2), 5 starts as flexmix's 5 (47.8 s + 24.5 s polish).

Each timing is the median of ``--repeat`` runs in this process; accuracy is the MAP accuracy against
the true classes after the best label permutation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import memoe
from memoe.moe.em import EMControl, run_em
from memoe.moe.experts import MStepControl
from memoe.moe.init import kmeans_tau, two_stage_features
from memoe.moe.multistart import MultiStartControl

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"
SIM2 = Path(__file__).parents[1] / "tests" / "data" / "memoe_sim2" / "memoe_sim2.csv"


def accuracy(fit_classes: np.ndarray, true: np.ndarray, K: int) -> float:
    """MAP accuracy after the best matching of labels (``memoe.metrics.accuracy``; K kept for the call sites)."""
    return memoe.metrics.accuracy(np.asarray(fit_classes), np.asarray(true))


def em_2000(repeat: int) -> dict:
    data, truth = memoe.simulate.memoe_data(2000, k=3, visits=(6, 6), seed=11)
    true = np.array(truth["true_class"]) - 1
    t_fit, t_em, out = [], [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        fit = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data).fit(n_starts=1, seed=1, progress=False, se=False)
        t_fit.append(time.perf_counter() - t0)
        out.update(fit_loglik=fit.loglik, fit_iter=fit.n_iter, fit_acc=accuracy(fit.classify().to_numpy() - 1, true, 3))
        prob = fit.model.problem
        t0 = time.perf_counter()
        tau = kmeans_tau(two_stage_features(prob.expert.stats), 3, np.random.default_rng(1))
        run = run_em(prob, prob.initial_params(tau), EMControl(max_iter=2000, tol=1e-10, tol_par=1e-6))
        t_em.append(time.perf_counter() - t0)
        out.update(em_loglik=run.loglik, em_iter=run.n_iter, em_converged=run.converged,
                   em_acc=accuracy(run.estep.tau.argmax(axis=1), true, 3))
    out.update(fit_seconds=statistics.median(t_fit), em_seconds=statistics.median(t_em))
    return out


def _controls(mstep: str) -> tuple[MStepControl | None, MultiStartControl | None]:
    """The model's and the exploratory runs' M-step settings (None, None: the package defaults)."""
    if mstep == "fisher":
        return None, None
    short = MStepControl(maxeval=20, ftol_abs=1e-6, xtol_abs=1e-4, optimizer="bobyqa", gate_iter=25)
    return MStepControl(optimizer="bobyqa"), MultiStartControl(short_mstep=short)


def fit_10000(repeat: int, subjects: int = 10_000, mstep: str = "fisher") -> dict:
    data, truth = memoe.simulate.memoe_data(subjects, k=3, visits=(6, 6), seed=11)
    true = np.array(truth["true_class"]) - 1
    t_fit, t_cpu, t_se, out = [], [], [], {}
    model_ctl, fit_ctl = _controls(mstep)
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fit = memoe.MEMoE(FORMULA, gating=GATING, k=3, data=data, mstep=model_ctl).fit(
            n_starts=20, seed=1, progress=False, se=False, control=fit_ctl
        )
        t_fit.append(time.perf_counter() - t0)
        t_cpu.append(time.process_time() - c0)
        out.update(em_iter_total=int(fit.starts["n_iter"].sum()), n_pruned=int(fit.starts["pruned"].sum()))
        t0 = time.perf_counter()
        _ = fit.inference
        t_se.append(time.perf_counter() - t0)
        out.update(loglik=fit.loglik, n_at_best=fit.n_at_best, n_same=fit.n_same_partition, iter=fit.n_iter,
                   acc=accuracy(fit.classify().to_numpy() - 1, true, 3),
                   score_norm=fit.inference.score_norm)
    out.update(fit_seconds=statistics.median(t_fit), cpu_seconds=statistics.median(t_cpu),
               se_seconds=statistics.median(t_se))
    return out


def sim2(repeat: int) -> dict:
    data = pd.read_csv(SIM2)
    true = data.groupby("id")["true_class"].first().to_numpy() - 1
    times, out = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        fit = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=data).fit(n_starts=5, seed=1, progress=False)
        times.append(time.perf_counter() - t0)
        out.update(loglik=fit.loglik, acc=accuracy(fit.classify().to_numpy() - 1, true, 2), n_at_best=fit.n_at_best,
                   n_same=fit.n_same_partition)
    out["seconds"] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-large", action="store_true", help="skip the 10,000-subject fit")
    ap.add_argument("--subjects", type=int, default=None,
                    help="run only the 20-start K = 3 fit at this many subjects (issue 12: 100000, <= 120 s)")
    ap.add_argument("--mstep", choices=("fisher", "bobyqa"), default="fisher",
                    help="M-step of --subjects runs: the default, or the BOBYQA one it replaced (comparisons)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.subjects is not None:
        load0 = os.getloadavg()[0]
        r = fit_10000(args.repeat, args.subjects, args.mstep)
        it = max(r["em_iter_total"], 1)
        print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; M-step {args.mstep}; exact loglik "
              f"{r['loglik']!r}")
        print(f"fit_{args.subjects} (N={args.subjects:,}, K=3, 20 starts): {r['fit_seconds']:.2f} s wall "
              f"({r['cpu_seconds']:.2f} s CPU) + SEs {r['se_seconds']:.2f} s; {r['em_iter_total']} EM iterations over "
              f"all starts ({r['n_pruned']} starts pruned): {r['fit_seconds'] / it:.3f} s wall, "
              f"{r['cpu_seconds'] / it:.3f} s CPU per iteration; loglik {r['loglik']:.4f}, "
              f"starts at best {r['n_at_best']}/20, same classification {r['n_same']}/20, accuracy {r['acc']:.4f}, "
              f"max |score| {r['score_norm']:.2e}")
        return
    r = sim2(args.repeat)
    print(f"sim2 (N=300, K=2, 5 starts, with SEs): {r['seconds']:.2f} s, loglik {r['loglik']:.4f} "
          f"(flexmix -2959.6959), accuracy {r['acc']:.4f} (flexmix 0.9100), starts at best {r['n_at_best']}/5, "
          f"same classification {r['n_same']}/5")
    r = em_2000(args.repeat)
    print(f"em_2000 (N=2,000, K=3): fit(n_starts=1) {r['fit_seconds']:.2f} s, {r['fit_iter']} EM iterations, "
          f"loglik {r['fit_loglik']:.4f}, accuracy {r['fit_acc']:.4f}; plain EM (strict rule) {r['em_seconds']:.2f} s, "
          f"{r['em_iter']} iterations ({r['em_seconds'] / max(r['em_iter'], 1):.3f} s/iteration), "
          f"loglik {r['em_loglik']:.4f}, converged {r['em_converged']}, accuracy {r['em_acc']:.4f}; "
          f"flexmix 351 s -> speed-up {351 / r['fit_seconds']:.0f}x (fit) / {351 / r['em_seconds']:.0f}x (EM)")
    if not args.skip_large:
        r = fit_10000(args.repeat)
        print(f"fit_10000 (N=10,000, K=3, 20 starts): {r['fit_seconds']:.2f} s + SEs {r['se_seconds']:.2f} s, "
              f"loglik {r['loglik']:.4f}, starts at best {r['n_at_best']}/20, "
              f"same classification {r['n_same']}/20, accuracy {r['acc']:.4f}, "
              f"max |score| {r['score_norm']:.2e}")


if __name__ == "__main__":
    main()
