"""``memoe.report(fit, "report.html")``: one self-contained HTML page of a fit.

The page needs no network: figures are embedded as base64 PNG, the style sheet is inline, there are no
scripts and no links to fetch. It holds the model call, the fit statistics, convergence and
singularity notes, the summary and its tables, the diagnostic figures that apply to the family and,
for mixtures, the class table and class trajectories.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from pathlib import Path

import pandas as pd

from memoe.errors import ArgumentTypeError, MemoeError
from memoe.plot._view import FitView

__all__ = ["figure_to_base64", "report", "report_html"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #4477aa; padding-bottom: .2em; }
h2 { color: #335; margin-top: 1.6em; border-bottom: 1px solid #ccd; }
pre { background: #f6f6f8; padding: .8em; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ccd; padding: 3px 8px; text-align: right; }
th { background: #eef; }
.note { padding: .5em .8em; margin: .4em 0; border-left: 4px solid #4a4; background: #f3fbf3; }
.warn { border-left-color: #c80; background: #fff8ec; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figcaption { font-size: 12px; color: #555; text-align: center; }
img { max-width: 100%; }
"""

# the diagnostic figures in the order the page shows them, with captions
_FIGURES = [
    ("residuals", "Residuals against fitted values, with a lowess smoother"),
    ("qq", "Normal QQ plot of the residuals"),
    ("ranef_qq", "Normal QQ plots of the predicted random effects"),
    ("caterpillar", "Predicted random effects with conditional intervals"),
    ("shrinkage", "Shrinkage of per-group OLS estimates to the BLUPs"),
    ("variance_components", "Variance components and ICC"),
    ("trajectories", "Subject trajectories and the population curve"),
    ("predictions", "Population and subject predictions"),
    ("posterior", "Posterior classification"),
    ("gate_effects", "Gating probabilities by covariate"),
]


def figure_to_base64(fig, dpi: int = 96) -> str:
    """PNG bytes of ``fig`` as base64 text (for ``<img src="data:image/png;base64,...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(df: pd.DataFrame, digits: int = 4) -> str:
    return df.to_html(float_format=lambda x: f"{x:.{digits}g}", border=0, na_rep="")


def _model_call(fit, view: FitView) -> str:
    fam = view.family
    parts = [f"formula = {view.formula}"]
    model = getattr(fit, "model", None)
    if fam in ("memoe", "moe"):
        parts.append(f"gating = {model.gating!r}, k = {fit.k}")
    if fam == "gee":
        parts.append(f"family = {model.family!r}, id = {model.group!r}, corstr = {model.corstr!r}")
    if fam == "glmm":
        link = getattr(getattr(fit.response_family, "link", None), "name", "?")
        parts.append(f"family = {getattr(fit.response_family, 'name', '?')}({link}), nAGQ = {fit.nAGQ}")
    if fam in ("gls", "lme") and getattr(model, "correlation", None) is not None:
        parts.append(f"correlation = {model.correlation!r}")
    method = getattr(fit, "method", None)
    if isinstance(method, str):
        parts.append(f"method = {method}")
    return f"{type(fit).__name__}: " + ", ".join(parts)


def _notes(fit) -> list[tuple[str, str]]:
    """(css class, text) of the convergence and singularity notes."""
    out = []
    if fit.converged:
        out.append(("note", "The optimiser converged."))
    else:
        out.append(("note warn", "The fit did NOT converge: treat estimates and standard errors with caution."))
    if fit.singular:
        out.append(("note warn", "Singular (boundary) fit: a random-effects covariance is not of full rank; "
                                 "consider simplifying the random-effects structure."))
    for msg in getattr(fit, "messages", []) or []:
        out.append(("note warn", str(msg)))
    if getattr(fit, "family", None) in ("memoe", "moe"):
        out.append(("note", f"{fit.n_same_partition} of {len(fit.starts)} starts ended with this classification; "
                            f"{fit.n_iter} EM iterations."))
        if fit.degenerate_experts:
            out.append(("note warn", f"Degenerate experts: {fit.degenerate_experts}"))
    return out


def report_html(fit, title: str | None = None, figures: bool = True, dpi: int = 96, max_subjects: int = 200) -> str:
    """The report page as an HTML string (see :func:`report`).

    Parameters
    ----------
    fit : FitResult
        Any fitted memoe model.
    title : str, optional
    figures : bool
        Embed the diagnostic figures (base64 PNG).
    dpi : int
        Resolution of the embedded figures.
    max_subjects : int
        Subjects drawn in the trajectory figure.

    Returns
    -------
    str
        A complete, self-contained HTML document (no external resources).

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (1 | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> page = memoe.plot.report_html(fit, figures=False)
    >>> page.startswith("<!DOCTYPE html>")
    True
    """
    # duck-typed on the shared result interface (importing FitResult here would close an import cycle)
    if not (hasattr(fit, "summary") and hasattr(fit, "glance") and hasattr(fit, "params")):
        raise ArgumentTypeError(f"report needs a fitted model (a memoe FitResult), got {type(fit).__name__}")
    view = FitView(fit)
    title = title or f"{type(fit).__name__} report: {view.formula}"
    e = html.escape
    body = [f"<h1>{e(title)}</h1>",
            f"<p class='meta'>memoe report, {e(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}</p>",
            "<h2>Model</h2>", f"<pre>{e(_model_call(fit, view))}</pre>",
            _table(fit.glance())]
    body.append("<h2>Convergence</h2>")
    body += [f"<div class='{cls}'>{e(text)}</div>" for cls, text in _notes(fit)]
    summary = fit.summary()
    body += ["<h2>Summary</h2>", f"<pre>{e(str(summary))}</pre>"]
    for name, table in getattr(summary, "tables", {}).items():
        if isinstance(table, pd.DataFrame) and not table.empty:
            body += [f"<h3>{e(str(name))}</h3>", _table(table)]
    if view.family in ("memoe", "moe"):
        body += ["<h2>Classes</h2>", _table(fit.classification_table())]
    if view.has_ranef() and view.family != "memoe":
        from memoe.plot.components import variance_components_table

        try:
            vc = variance_components_table(fit)
            body += ["<h2>Variance components</h2>", _table(vc),
                     f"<p>ICC = {vc.attrs['icc']:.4f} (between / (between + within); "
                     f"within = {e(vc.attrs['within'])})</p>"]
        except MemoeError as exc:
            body.append(f"<div class='note warn'>{e(str(exc))}</div>")
    if figures:
        body.append("<h2>Diagnostics</h2>")
        plot = fit.plot
        available = set(plot.available())
        for name, caption in _FIGURES:
            if name not in available:
                continue
            kwargs = {"max_subjects": max_subjects} if name == "trajectories" else {}
            try:
                fig = getattr(plot, name)(**kwargs)
            except MemoeError as exc:
                body.append(f"<div class='note warn'>{e(name)}: {e(str(exc))}</div>")
                continue
            data = figure_to_base64(fig, dpi=dpi)
            body.append(f"<figure><img alt='{e(name)}' src=\"data:image/png;base64,{data}\">"
                        f"<figcaption>{e(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{e(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def report(fit, path: str | os.PathLike, title: str | None = None, figures: bool = True, dpi: int = 96,
           max_subjects: int = 200) -> Path:
    """Write one self-contained HTML page about ``fit`` (no network needed to view it).

    Parameters
    ----------
    fit : FitResult
        Any fitted memoe model.
    path : str or path-like
        The file to write (``.html``); its directory must exist.
    title : str, optional
    figures : bool
        Embed the diagnostic figures that apply to the family (base64 PNG).
    dpi : int
        Resolution of the embedded figures.
    max_subjects : int
        Subjects drawn in the trajectory figure.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> memoe.report(fit, "sleepstudy.html").name
    'sleepstudy.html'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"path must be a file path (str or path-like), got {type(path).__name__}")
    out = Path(path)
    if not out.parent.exists():
        raise MemoeError(f"path {str(out)!r}: the directory {str(out.parent)!r} does not exist")
    out.write_text(report_html(fit, title=title, figures=figures, dpi=dpi, max_subjects=max_subjects),
                   encoding="utf-8")
    return out
