"""Mixed models on Dask DataFrames: out of core, one grouping factor, per-subject statistics on the workers.

``memoe.lmm(formula, data=ddf)``, ``memoe.glmm(formula, data=ddf, family=...)`` and ``memoe.MEMoE`` dispatch here when
``data`` is a Dask DataFrame (``pip install "memoe[dask]"``). The stages:

* :mod:`memoe.dask.partition` -- shuffle once so that each subject lives in one partition (skipped
  when the partitions are already aligned);
* :mod:`memoe.dask.spec` -- learn the design spec (factor levels from a distributed ``unique()``,
  formulaic's encoding fitted on a head with those levels) and evaluate it per partition;
* :mod:`memoe.dask.stats` -- per-subject sufficient statistics computed and persisted on the
  workers; each objective evaluation sends theta and gets small reduced arrays back;
* :mod:`memoe.dask.lmm`, :mod:`memoe.dask.glmm` -- the models (the optimiser runs on the client);
* :mod:`memoe.dask.moe` -- ``memoe.MEMoE(..., data=ddf)``: closed-form ECM (:mod:`memoe.moe.ecm`), one pass
  per iteration for all starts, then a Newton finish; :mod:`memoe.dask.moe_result` its lazy result;
* :mod:`memoe.dask.result` -- the result classes (subclasses of the in-memory ones) whose per-row and
  per-subject outputs are Dask collections.

This module never imports dask itself: :func:`is_dask_dataframe` looks at the type's module, so the
in-memory path stays free of it.
"""

from __future__ import annotations

__all__ = ["is_dask_dataframe"]


def is_dask_dataframe(data: object) -> bool:
    """True for a Dask DataFrame (legacy or dask-expr), without importing dask."""
    mod = type(data).__module__ or ""
    return mod.startswith(("dask.", "dask_expr")) and hasattr(data, "npartitions") and hasattr(data, "columns")
