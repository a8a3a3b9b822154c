"""Save and rebuild a :class:`~memoe.glmm.result.GlmmResult` (of :func:`memoe.glmm`).

The file keeps the formula, the family and link as names (``{"name": "binomial", "link": "logit"}``),
nAGQ, the used columns of the kept rows, the prior weights and the ``offset=`` values of the kept
rows (as arrays; the formula's ``offset(...)`` terms are re-evaluated from the data), the estimates
(theta, beta) and the fit record: both optimisers' summaries, the convergence report and the
finite-difference Hessian of the deviance at the optimum.

Loading rebuilds the model and constructs the result at the saved (theta, beta) as
:meth:`memoe.glmm.model.GLMM.fit` does after optimising (no optimisation): PIRLS restarts from the
stage-1 conditional modes (recomputed from the saved stage-1 theta) and the Hessian is the saved
one. :meth:`~memoe.glmm.model.GLMM.result_at` is not used for this: it starts PIRLS from zero and
recomputes the Hessian by finite differences from there, which moves the Hessian-based ``vcov`` in
the sixth digit and the log-likelihood in the twelfth; a fit made by ``result_at`` is saved with
that record (no stages, zero start) and rebuilt the same way. The saved log-likelihood is checked.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memoe.core.design.contrasts import check_saved_contrasts
from memoe.core.linalg.threads import blas_threads
from memoe.core.optim import ConvergenceReport, OptSummary
from memoe.core.persist.archive import PersistenceError
from memoe.core.persist.common import (
    check_equal,
    check_loglik,
    decode_dataclass,
    encode_dataclass,
    encode_model_frame,
    plain,
    restore_model_frame,
    saved_columns,
)
from memoe.core.persist.formula_check import check_formula
from memoe.core.persist.frames import decode_frame, encode_frame
from memoe.core.persist.registry import register_codec
from memoe.errors import MemoeError
from memoe.glmm.families import Binomial, Gamma, Gaussian, InverseGaussian, NegativeBinomial, Poisson, get_family
from memoe.glmm.glm import GlmResult, nb_theta_se
from memoe.glmm.model import GLMM, StageResult
from memoe.glmm.pirls import PirlsProblem
from memoe.glmm.result import GlmmResult

__all__ = ["check_glmm", "decode_glm", "decode_glmm", "encode_glmm"]

# the families a file may name, by memoe's family name
FAMILIES = {
    "binomial": Binomial, "poisson": Poisson, "Gamma": Gamma, "inverse.gaussian": InverseGaussian,
    "gaussian": Gaussian, "negative_binomial": NegativeBinomial,
}


def _encode_family(model) -> dict:
    family = model.family
    if FAMILIES.get(family.name) is not type(family):
        raise PersistenceError(
            f"the family {family} is not one of memoe's families {sorted(FAMILIES)} and cannot be saved"
        )
    out = {"name": family.name, "link": family.link.name}
    if isinstance(family, NegativeBinomial):
        # the model's theta: None when estimated (the estimate is saved with the fit)
        out["theta"] = family.theta
    return out


def _family_from(fam: dict):
    family = get_family(fam["name"], fam["link"])
    theta = fam.get("theta")
    if isinstance(family, NegativeBinomial) and theta is not None:
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not np.isfinite(theta) or theta <= 0:
            raise PersistenceError(f"the saved negative binomial theta {theta!r} is not a positive number")
        family = family.with_theta(float(theta))
    return family


def _encode_stage(stage: StageResult | None, key: str, arrays: dict[str, np.ndarray]) -> dict | None:
    if stage is None:
        return None
    arrays[f"{key}.theta"] = np.asarray(stage.theta, dtype=float)
    arrays[f"{key}.beta"] = np.asarray(stage.beta, dtype=float)
    return {"opt": encode_dataclass(stage.opt, f"{key}.opt", arrays), "family_theta": stage.family_theta}


def _decode_stage(spec: dict | None, key: str, arrays: dict[str, np.ndarray]) -> StageResult | None:
    if spec is None:
        return None
    opt = decode_dataclass(OptSummary, spec["opt"], f"{key}.opt", arrays)
    ft = spec.get("family_theta")
    return StageResult(opt, arrays[f"{key}.theta"], arrays[f"{key}.beta"], None if ft is None else float(ft))


def encode_glmm(fit: GlmmResult, arrays: dict[str, np.ndarray]) -> dict:
    """The ``model`` and ``fit`` parts of ``meta.json`` for a GLMM fit; arrays go to ``arrays``."""
    model, design, gd = fit.model, fit.design, fit.model.gdesign
    arrays["fit.theta"] = np.asarray(fit.state.theta, dtype=float)
    arrays["fit.beta"] = np.asarray(fit.state.beta, dtype=float)
    arrays["model.prior_weights"] = np.asarray(gd.prior_weights, dtype=float)
    arrays["model.offset"] = np.asarray(gd.offset, dtype=float)
    if fit.hessian is not None:
        arrays["fit.hessian"] = np.asarray(fit.hessian, dtype=float)
    if getattr(fit, "nb_hessian", None) is not None:
        arrays["fit.nb_hessian"] = np.asarray(fit.nb_hessian, dtype=float)
    return {
        "model": {
            "class": "GLMM",
            "formula": model.formula,
            "family": _encode_family(model),
            "data_name": model.data_name,
            "data": encode_frame(design.frame.data, "data", arrays, "the model frame"),
            "frame": encode_model_frame(design, "frame", arrays),
            "offset_terms": list(gd.offset_terms),
            "fixef_names": list(design.fixef_names),
            "contrasts": dict(design.fixed.contrasts),
            "theta_names": list(design.theta_map.names),
        },
        "fit": {
            "nAGQ": fit.nAGQ,
            "stage1": _encode_stage(fit.stage1, "fit.stage1", arrays),
            "stage2": _encode_stage(fit.stage2, "fit.stage2", arrays),
            "convergence": encode_dataclass(fit.convergence, "fit.convergence", arrays),
            "hessian": fit.hessian is not None,
            "singular": fit.singular,
            "messages": list(fit.messages),
            "loglik": float(fit.loglik),
            "family_theta": fit.family_theta,
            "laplace": fit.laplace,
            "nb_hessian": getattr(fit, "nb_hessian", None) is not None,
        },
        # for a human reading meta.json; loading recomputes them from theta and beta
        "estimates": {
            "theta": plain(fit.theta.to_dict()),
            "fixef": plain(fit.fixef.to_dict()),
            "nobs": fit.nobs,
        },
    }


def _rebuild_model(m: dict, arrays: dict[str, np.ndarray]) -> GLMM:
    data = decode_frame(m["data"], "data", arrays)
    if m.get("data_name") is not None:
        data.attrs["name"] = m["data_name"]
    fam = m["family"]
    if fam["name"] not in FAMILIES:
        raise PersistenceError(f"unknown family {fam['name']!r} (this memoe knows {sorted(FAMILIES)})")
    family = _family_from(fam)
    prior = arrays["model.prior_weights"]
    offset = arrays["model.offset"]
    # the offset= argument is the saved total when the formula has no offset(...) terms; with terms the
    # total is their sum plus the argument, so the argument is recovered below only if one was given
    model = GLMM(
        m["formula"], data, family,
        weights=None if np.all(prior == 1.0) else prior,
        offset=None if m["offset_terms"] or not np.any(offset != 0.0) else offset,
        contrasts=m.get("contrasts"),
    )
    if not np.array_equal(model.gdesign.offset, offset):
        if not m["offset_terms"]:
            raise PersistenceError("the rebuilt model's offset differs from the saved one")
        # an offset= argument on top of offset(...) terms: recover the argument; if the float sum does not
        # come back bit for bit, the model uses the saved total (what the fit used)
        weights = None if np.all(prior == 1.0) else prior
        model = GLMM(
            m["formula"], data, family, weights=weights, offset=offset - model.gdesign.offset,
            contrasts=m.get("contrasts"),
        )
        if not np.array_equal(model.gdesign.offset, offset):
            model.gdesign = dataclasses.replace(model.gdesign, offset=offset)
            model.problem = PirlsProblem(model.gdesign, model.family)
    if not np.array_equal(model.gdesign.prior_weights, prior):
        raise PersistenceError("the rebuilt model's prior weights differ from the saved ones")
    model.design = restore_model_frame(model.design, m["frame"], "frame", arrays)
    check_equal("fixed-effects names", m["fixef_names"], model.design.fixef_names)
    check_equal("theta names", m["theta_names"], model.design.theta_map.names)
    return model


def check_glmm(meta: dict) -> None:
    """Refuse a file whose formula has pieces outside the allow-list or an unknown family (before evaluating)."""
    m = meta["model"]
    check_formula(m.get("formula"), saved_columns(m), what="the saved GLMM formula")
    check_saved_contrasts(m.get("contrasts"), saved_columns(m), what="the saved GLMM contrasts")
    fam = m.get("family")
    if not isinstance(fam, dict) or not isinstance(fam.get("link"), str):
        raise PersistenceError(f"the saved family {repr(fam)[:80]} is not a record with a name and a link name")
    if fam.get("name") not in FAMILIES:
        raise PersistenceError(f"unknown family {repr(fam.get('name'))[:80]} (this memoe knows {sorted(FAMILIES)})")
    try:
        _family_from(fam)
    except MemoeError as exc:
        raise PersistenceError(f"the saved family {repr(fam)[:80]} is not valid: {exc}") from None


def decode_glmm(meta: dict, arrays: dict[str, np.ndarray]) -> GlmmResult:
    """Rebuild the model and the result at the saved (theta, beta) with the saved fit record."""
    m, f = meta["model"], meta["fit"]
    model = _rebuild_model(m, arrays)
    theta, beta = arrays["fit.theta"], arrays["fit.beta"]
    if theta.shape != (model.design.theta_map.size,) or beta.shape != (model.design.p,):
        raise PersistenceError(
            f"the saved estimates (theta {theta.shape}, beta {beta.shape}) do not fit the rebuilt model"
        )
    stage1 = _decode_stage(f["stage1"], "fit.stage1", arrays)
    stage2 = _decode_stage(f["stage2"], "fit.stage2", arrays)
    hessian = arrays["fit.hessian"] if f["hessian"] else None
    nb_hessian = arrays["fit.nb_hessian"] if f.get("nb_hessian") else None
    final_theta = _nb_theta(model, f)
    convergence = decode_dataclass(ConvergenceReport, f["convergence"], "fit.convergence", arrays)
    # GLMM.fit and GLMM.result_at build their results with one BLAS thread
    with blas_threads(1):
        # GLMM.fit starts the final PIRLS from the stage-1 modes, result_at from zero
        if stage1 is not None:
            if model.nb_estimated:
                model.set_family_theta(stage1.family_theta)
            u_start = model.problem.solve(stage1.theta, beta=None).u
        else:
            u_start = np.zeros(model.problem.q)
        if final_theta is not None:
            model.set_family_theta(final_theta)
        fit = GlmmResult(
            model=model, nAGQ=f["nAGQ"], theta=theta, beta=beta, u_start=u_start, stage1=stage1, stage2=stage2,
            convergence=convergence, hessian=hessian, singular=f["singular"], messages=[], nb_hessian=nb_hessian,
            laplace=_laplace(f),
        )
    # the result appends its own notes (PIRLS, Hessian) to the fitter's messages: keep the saved list
    added = fit.messages
    if added and f["messages"][-len(added):] != added:
        raise PersistenceError(f"the rebuilt fit's notes {added!r} are not among the saved messages")
    fit.messages = list(f["messages"])
    check_loglik(f["loglik"], fit.loglik)
    return fit


def _laplace(f: dict) -> str:
    kind = f.get("laplace", "expected")
    if kind not in ("expected", "observed"):
        raise PersistenceError(f"unknown Laplace approximation {repr(kind)[:40]} (expected or observed)")
    return kind


def _nb_theta(model: GLMM, f: dict) -> float | None:
    """The estimated negative binomial theta of the saved fit (None unless the model estimates it)."""
    if not model.nb_estimated:
        return None
    t = f.get("family_theta")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not np.isfinite(t) or t <= 0:
        raise PersistenceError(f"the saved fit's negative binomial theta {t!r} is not a positive number")
    return float(t)


def decode_glm(meta: dict, arrays: dict[str, np.ndarray]) -> GlmResult:
    """Rebuild a GLM (no random effects) at the saved coefficients."""
    m, f = meta["model"], meta["fit"]
    model = _rebuild_model(m, arrays)
    beta = arrays["fit.beta"]
    if model.design.theta_map.size or beta.shape != (model.design.p,):
        raise PersistenceError(f"the saved coefficients {beta.shape} do not fit the rebuilt GLM")
    theta = _nb_theta(model, f)
    if theta is not None:
        model.set_family_theta(theta)
    convergence = decode_dataclass(ConvergenceReport, f["convergence"], "fit.convergence", arrays)
    with blas_threads(1):
        fit = GlmResult(model, beta, convergence, list(f["messages"]))
        if theta is not None:
            P = model.problem
            fit._theta_se = nb_theta_se(P.y, fit.state.pirls.mu, P.wt, theta)
    fit.messages = list(f["messages"])
    check_loglik(f["loglik"], fit.loglik)
    return fit


register_codec(
    "GlmResult", result_type=GlmResult, model_types={"GLMM": GLMM}, encode=encode_glmm, decode=decode_glm,
    check=check_glmm, description="GlmResult (of memoe.glmm without random effects)",
)
register_codec(
    "GlmmResult", result_type=GlmmResult, model_types={"GLMM": GLMM}, encode=encode_glmm, decode=decode_glmm,
    check=check_glmm, description="GlmmResult (of memoe.glmm)",
)
