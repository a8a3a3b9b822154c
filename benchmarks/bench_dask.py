"""Dask LMM out of core from Parquet (issue 14): fit time, time and bytes per evaluation, worker memory.

Run by hand (never collected by pytest)::

    python benchmarks/bench_dask.py                          # 20,000,000 rows, 2,000,000 subjects
    python benchmarks/bench_dask.py --rows 2000000 --memory-limit 600MB
    python benchmarks/bench_dask.py --model memoe --subjects 200000     # MEMoE, K = 2, 3 starts

Writes ``--dir`` (default /tmp/memoe_bench_dask) as Parquet files of ~``--rows-per-file`` rows whose rows
are in random order *within* files of consecutive subjects (aligned, as exported panel data usually is;
``--unaligned`` scatters subjects over all files, so that the fit shuffles first). Starts a LocalCluster
of ``--workers`` worker processes with ``--memory-limit`` each, fits ``y ~ t + x + (t | id)`` (REML) on
``dd.read_parquet``, and, unless ``--no-memory``, the same model in memory on the same data.

``--model memoe`` simulates ``--subjects`` subjects of a two-class MEMoE (``memoe.simulate.memoe_data``),
writes them as Parquet (consecutive subjects per file), fits ``MEMoE("y ~ time + x + (time | id)",
gating="~ w1 + w2", k=2)`` with ``--starts`` starts on the cluster and reports the set-up and fit times,
the client <-> workers round trips, the seconds per ECM iteration and per Newton pass, and the in-memory
fit of the same data.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import time

import numpy as np
import pandas as pd


def write_parquet(path: str, rows: int, rows_per_file: int, visits: int, unaligned: bool, seed: int = 1) -> None:
    """Simulate ``rows`` rows (``rows / visits`` subjects) chunk by chunk: never all in memory at once."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    n_sub = rows // visits
    subs_per_file = max(1, rows_per_file // visits)
    nfiles = -(-n_sub // subs_per_file)
    rng = np.random.default_rng(seed)
    for k in range(nfiles):
        s0, s1 = k * subs_per_file, min(n_sub, (k + 1) * subs_per_file)
        ids = np.repeat(np.arange(s0, s1), visits)
        if unaligned:
            ids = rng.integers(0, n_sub, len(ids))
        t = np.tile(np.arange(visits, dtype=float), s1 - s0)[: len(ids)]
        x = rng.normal(size=len(ids))
        b0 = np.random.default_rng(ids * 2 + 1).normal(0, 1.0, len(ids)) if unaligned else None
        if b0 is None:
            rb = rng.normal(0, [1.0, 0.3], size=(s1 - s0, 2))
            b0, b1 = rb[ids - s0, 0], rb[ids - s0, 1]
        else:
            b1 = np.random.default_rng(ids * 2 + 2).normal(0, 0.3, len(ids))
        y = 1.0 + 0.5 * t + 0.3 * x + b0 + b1 * t + rng.normal(0, 1.0, len(ids))
        df = pd.DataFrame({"id": ids, "t": t, "x": x, "y": y}).sample(frac=1.0, random_state=k)
        df.to_parquet(os.path.join(path, f"part-{k:05d}.parquet"), index=False)


def worker_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--visits", type=int, default=10)
    ap.add_argument("--rows-per-file", type=int, default=500_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1.5GB")
    ap.add_argument("--dir", default="/tmp/memoe_bench_dask")
    ap.add_argument("--unaligned", action="store_true")
    ap.add_argument("--no-memory", action="store_true", help="skip the in-memory fit")
    ap.add_argument("--reuse", action="store_true", help="reuse the Parquet files of --dir")
    ap.add_argument("--model", choices=["lmm", "memoe"], default="lmm")
    ap.add_argument("--subjects", type=int, default=200_000, help="--model memoe: subjects")
    ap.add_argument("--starts", type=int, default=3, help="--model memoe: random starts")
    a = ap.parse_args()
    if a.model == "memoe":
        bench_memoe(a)
        return

    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    import memoe
    from memoe.dask.stats import part_first_block

    if not a.reuse:
        t0 = time.perf_counter()
        write_parquet(a.dir, a.rows, a.rows_per_file, a.visits, a.unaligned)
        print(f"wrote {a.rows:,} rows ({a.rows // a.visits:,} subjects) in {time.perf_counter() - t0:.1f} s")
    data_bytes = a.rows * 4 * 8
    cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, memory_limit=a.memory_limit,
                           dashboard_address=None, silence_logs=40)
    client = Client(cluster)
    ddf = dd.read_parquet(a.dir)
    formula = "y ~ t + x + (t | id)"
    t0 = time.perf_counter()
    model = memoe.lmm(formula, data=ddf)
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = model.fit(reml=True)
    t_fit = time.perf_counter() - t0
    nev = model.problem.evaluations
    # one more evaluation, timed alone
    t0 = time.perf_counter()
    model.problem.deviance(fit.theta.to_numpy(), True)
    t_eval = time.perf_counter() - t0
    nparts = len(model.problem.stats.parts)
    lam = fit.relative_factors()[0]
    m = fit.design.p + 1
    # bytes per evaluation: lambda to every partition task, (float, m x m) back from each, tree sums
    out_bytes = len(pickle.dumps((0.0, np.zeros((m, m)))))
    in_bytes = len(pickle.dumps(lam))
    moved = nparts * (in_bytes + out_bytes) * 2
    peaks = client.run(worker_peak_rss)
    print(f"data in memory (4 float64 columns): {data_bytes / 1e9:.2f} GB; {a.workers} workers x {a.memory_limit}")
    print(f"set-up (spec, {'shuffle, ' if model.shuffled else ''}statistics persisted): {t_setup:.1f} s; "
          f"{nparts} partitions")
    print(f"fit: {t_fit:.1f} s, {nev} evaluations incl. derivative check ({t_fit / max(nev, 1) * 1e3:.0f} ms each); "
          f"one evaluation alone {t_eval * 1e3:.0f} ms; ~{moved / 1e3:.1f} kB moved per evaluation")
    print("peak RSS per worker: " + ", ".join(f"{v / 1e6:.0f} MB" for v in peaks.values()))
    print(fit.coef_table().round(5))
    print(fit.varcorr)
    client.close()
    cluster.close()
    del part_first_block
    if not a.no_memory:
        t0 = time.perf_counter()
        df = pd.read_parquet(a.dir)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        fm = memoe.lmm(formula, data=df).fit(reml=True)
        t_mem = time.perf_counter() - t0
        print(f"in memory: read {t_read:.1f} s, fit {t_mem:.1f} s; peak RSS of this process "
              f"{worker_peak_rss() / 1e9:.2f} GB; |dlogLik| = {abs(fm.loglik - fit.loglik):.2e}, "
              f"max |dbeta| = {np.max(np.abs(fm.params.to_numpy() - fit.params.to_numpy())):.2e}")


def bench_memoe(a) -> None:
    """MEMoE K = 2 on a LocalCluster: set-up, fit, round trips, seconds per ECM iteration; in memory for comparison."""
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    import memoe
    import memoe.dask.moe as dmoe

    path = a.dir + "_memoe"
    if not a.reuse:
        t0 = time.perf_counter()
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(path)
        df, _ = memoe.simulate.memoe_data(a.subjects, k=2, seed=1)
        df = df.drop(columns="true_class")
        per = max(1, a.rows_per_file // max(1, int(len(df) / a.subjects)))
        ids = df["id"].to_numpy()
        for j, s0 in enumerate(range(ids.min(), ids.max() + 1, per)):
            part = df[(ids >= s0) & (ids < s0 + per)].sample(frac=1.0, random_state=j)
            part.to_parquet(os.path.join(path, f"part-{j:05d}.parquet"), index=False)
        print(f"wrote {len(df):,} rows ({a.subjects:,} subjects) in {time.perf_counter() - t0:.1f} s")
        del df
    cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, memory_limit=a.memory_limit,
                           dashboard_address=None, silence_logs=40)
    client = Client(cluster)
    # lowered now: read_parquet may combine small files, and the partition count must be the real one
    ddf = dd.read_parquet(path).optimize()
    formula, gating = "y ~ time + x + (time | id)", "~ w1 + w2"
    # time each kind of pass
    orig = dmoe._Stats.reduce
    passes: dict[str, list[float]] = {}

    def timed(self, fn, *args):
        t = time.perf_counter()
        out = orig(self, fn, *args)
        passes.setdefault(fn.__name__, []).append(time.perf_counter() - t)
        return out

    dmoe._Stats.reduce = timed
    t0 = time.perf_counter()
    model = memoe.MEMoE(formula, gating=gating, k=2, data=ddf)
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = model.fit(n_starts=a.starts, seed=1, progress=False)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    se = fit.bse
    t_se = time.perf_counter() - t0
    dmoe._Stats.reduce = orig
    peaks = client.run(worker_peak_rss)
    nparts = len(model.stats.parts)
    print(f"{model.n_subjects:,} subjects, {fit.nobs:,} rows, {nparts} partitions, {a.workers} workers x "
          f"{a.memory_limit}; set-up {t_setup:.1f} s")
    print(f"fit: {t_fit:.1f} s, {fit.round_trips} round trips, {fit.n_iter} ECM iterations "
          f"({a.starts} starts x short + run to convergence), {fit.newton_iter} Newton iterations; "
          f"standard errors {t_se:.1f} s")
    for name, v in passes.items():
        print(f"  {name}: {len(v)} passes, {np.mean(v):.2f} s each (total {np.sum(v):.1f} s)")
    print(f"  seconds per ECM iteration of the run to convergence: {fit.seconds_per_iteration:.2f}")
    print("peak RSS per worker: " + ", ".join(f"{v / 1e6:.0f} MB" for v in peaks.values()))
    print(f"logLik {fit.loglik:.4f}; max |score| {fit.inference.score_norm:.2e}")
    print(pd.DataFrame({"estimate": fit.params, "se": se}).round(5))
    client.close()
    cluster.close()
    if not a.no_memory:
        df = pd.read_parquet(path)
        t0 = time.perf_counter()
        fm = memoe.MEMoE(formula, gating=gating, k=2, data=df).fit(n_starts=a.starts, seed=1, progress=False)
        t_mem = time.perf_counter() - t0
        rel = np.max(np.abs(fm.params.to_numpy() - fit.params.to_numpy()) / (np.abs(fit.params.to_numpy()) + 1e-2))
        print(f"in memory: fit {t_mem:.1f} s (incl. standard errors), logLik {fm.loglik:.4f} "
              f"(Dask - memory = {fit.loglik - fm.loglik:.2e}), max relative |d estimate| {rel:.2e}")


if __name__ == "__main__":
    main()
