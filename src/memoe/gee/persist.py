"""Save and rebuild a :class:`~memoe.gee.GEEResult` (of :func:`memoe.gee`).

One source of truth: the file keeps the model's arguments (formula, group, family, corstr, time,
scale_fix), the used columns of the kept rows and the final estimates (beta, phi, alpha) with the
iteration record (converged, iterations). Loading rebuilds the model and recomputes everything else
at those estimates with the same code as :meth:`memoe.gee.GEE.fit` after its last iteration
(``GEE._variance``: robust and naive covariances, the covariances of phi and alpha); the moment
iteration is not rerun. The saved robust standard errors are checked against the recomputed ones.
"""

from __future__ import annotations

import warnings

import numpy as np

from memoe.core.design.contrasts import check_saved_contrasts
from memoe.core.persist.archive import PersistenceError
from memoe.core.persist.common import (
    LOGLIK_RTOL,
    check_columns,
    check_equal,
    encode_frame_record,
    plain,
    restore_frame_record,
    saved_columns,
)
from memoe.core.persist.formula_check import check_formula
from memoe.core.persist.frames import decode_frame, encode_frame
from memoe.core.persist.registry import register_codec
from memoe.gee.clusters import GEEOrderWarning
from memoe.gee.model import GEE
from memoe.gee.result import GEEResult

__all__ = ["check_gee", "decode_gee", "encode_gee"]


def encode_gee(fit: GEEResult, arrays: dict[str, np.ndarray]) -> dict:
    """The ``model`` and ``fit`` parts of ``meta.json`` for a GEE fit; arrays go to ``arrays``."""
    model = fit.model
    arrays["fit.beta"] = np.asarray(fit.beta, dtype=float)
    arrays["fit.alpha"] = np.asarray(fit.alpha_vec, dtype=float)
    arrays["fit.bse"] = np.sqrt(np.diag(np.asarray(fit.vbeta, dtype=float)))
    return {
        "model": {
            "class": "GEE",
            "formula": model.formula,
            "group": model.group,
            "family": model.family,
            "corstr": model.corstr,
            "time": model.time,
            "scale_fix": bool(model.scale_fix),
            "data_name": model._frame.data.attrs.get("name"),
            "data": encode_frame(model._frame.data, "data", arrays, "the model frame"),
            "frame": encode_frame_record(model._frame, "frame", arrays),
            "names": list(model.names),
            "contrasts": dict(model.contrasts),
        },
        "fit": {
            "phi": float(fit.phi),
            "converged": bool(fit.converged),
            "n_iter": int(fit.n_iter),
        },
        # for a human reading meta.json; loading uses the arrays
        "estimates": {
            "beta": plain(fit.params.to_dict()),
            "scale": float(fit.scale),
            "alpha": plain(fit.alpha.to_dict()),
            "nobs": fit.nobs,
            "ngroups": int(fit.model.n_clusters),
        },
    }


def check_gee(meta: dict) -> None:
    """Refuse a file whose formula, group or time are outside the allow-list (before evaluating)."""
    m = meta["model"]
    columns = saved_columns(m)
    check_formula(m.get("formula"), columns, what="the saved GEE formula")
    check_saved_contrasts(m.get("contrasts"), columns, what="the saved GEE contrasts")
    check_columns(m, {"group": "the group", "time": "the time"}, columns, "GEE")
    if m.get("group") is None:
        raise PersistenceError("the saved GEE has no group column")
    for option in ("family", "corstr"):
        if not isinstance(m.get(option), str):
            raise PersistenceError(f"the saved GEE's {option} must be a string, the file holds {m.get(option)!r:.80}")


def decode_gee(meta: dict, arrays: dict[str, np.ndarray]) -> GEEResult:
    """Rebuild the model and the result at the saved (beta, phi, alpha)."""
    m, f = meta["model"], meta["fit"]
    data = decode_frame(m["data"], "data", arrays)
    if m.get("data_name") is not None:
        data.attrs["name"] = m["data_name"]
    with warnings.catch_warnings():
        # the warning was given when the model was first built; the saved rows are in the same order
        warnings.simplefilter("ignore", GEEOrderWarning)
        model = GEE(
            m["formula"], data, m["group"], family=m["family"], corstr=m["corstr"], time=m["time"],
            scale_fix=m["scale_fix"],
            contrasts=m.get("contrasts"),
        )
    model._frame = restore_frame_record(model._frame, m["frame"], "frame", arrays)
    check_equal("coefficient names", m["names"], model.names)
    beta, alpha = arrays["fit.beta"], arrays["fit.alpha"]
    if beta.shape != (len(model.names),) or alpha.shape != (model._corr.q,):
        raise PersistenceError(
            f"the saved estimates (beta {beta.shape}, alpha {alpha.shape}) do not fit the rebuilt model "
            f"({len(model.names)} coefficients, {model._corr.q} correlation parameters)"
        )
    phi = float(f["phi"])
    var = model._variance(beta, phi, alpha)
    fit = GEEResult(
        model=model, beta=beta, phi=phi, alpha_vec=alpha, converged=f["converged"], n_iter=f["n_iter"], **var
    )
    _check_bse(arrays["fit.bse"], np.sqrt(np.diag(fit.vbeta)))
    return fit


def _check_bse(saved: np.ndarray, rebuilt: np.ndarray) -> None:
    """A GEE has no likelihood: the robust standard errors play the part of the log-likelihood check."""
    ok = saved.shape == rebuilt.shape and np.all(np.abs(rebuilt - saved) <= LOGLIK_RTOL * np.abs(saved))
    if not ok:
        raise PersistenceError(
            f"the rebuilt fit has robust standard errors {rebuilt.tolist()!r}, the saved fit {saved.tolist()!r}: "
            "the file does not reproduce its fit (edited file or a changed memoe engine)"
        )


register_codec(
    "GEEResult", result_type=GEEResult, model_types={"GEE": GEE}, encode=encode_gee, decode=decode_gee,
    check=check_gee, description="GEEResult (of memoe.gee)",
)
