"""memoe.report: one self-contained HTML page, checked as text and, where Chromium is installed, in a browser."""

from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

import memoe
from memoe.errors import ArgumentTypeError, MemoeError

IMG = re.compile(r'<img alt=\'([a-z_]+)\' src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture(scope="module")
def lmm_fit():
    return memoe.lmm("Reaction ~ Days + (Days | Subject)", data=memoe.datasets.load("sleepstudy")).fit()


@pytest.fixture(scope="module")
def gee_fit():
    orth = memoe.datasets.load("Orthodont")
    return memoe.gee("distance ~ age * Sex", data=orth, group="Subject", corstr="exchangeable").fit()


@pytest.fixture(scope="module")
def memoe_fit():
    sim2 = memoe.datasets.load("memoe_sim2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim2).fit(
            n_starts=2, seed=1, progress=False
        )


def check_page(page: str) -> dict[str, bytes]:
    """The page is self-contained: embedded PNGs only, no URL to fetch, no script."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert re.search(r"(src|href)=[\"'](?!data:)", page) is None
    images = {name: base64.b64decode(data, validate=True) for name, data in IMG.findall(page)}
    assert page.count("<img") == len(images) > 0
    for name, png in images.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
    return images


@pytest.mark.slow
def test_lmm_report(lmm_fit, tmp_path):
    path = memoe.report(lmm_fit, tmp_path / "report.html")
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    images = check_page(page)
    assert set(images) == set(lmm_fit.plot.available())
    assert "Reaction ~ Days + (Days | Subject)" in page and "method = REML" in page
    assert "The optimiser converged." in page and "Singular" not in page
    assert "Variance components" in page and "ICC = " in page
    # the summary's tables are rendered as HTML tables
    assert page.count("<table") >= 1 + len([t for t in lmm_fit.summary().tables.values() if len(t)])


@pytest.mark.slow
def test_gee_and_memoe_reports(gee_fit, memoe_fit, tmp_path):
    page = memoe.report(gee_fit, tmp_path / "gee.html").read_text(encoding="utf-8")
    assert set(check_page(page)) == {"residuals", "qq", "trajectories", "predictions"}
    assert "corstr = 'exchangeable'" in html.unescape(page)
    page = memoe.report(memoe_fit, tmp_path / "memoe.html").read_text(encoding="utf-8")
    images = check_page(page)
    assert {"trajectories", "posterior", "gate_effects"} <= set(images)
    assert "<h2>Classes</h2>" in page and "prob_1" in page and "gating = '~ w1 + w2', k = 2" in html.unescape(page)


def test_singular_fit_is_noted(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.lmm("Yield ~ 1 + (1 | Batch)", data=memoe.datasets.load("Dyestuff2")).fit()
    assert fit.singular
    page = memoe.report(fit, tmp_path / "r.html", figures=False).read_text(encoding="utf-8")
    assert "Singular (boundary) fit" in page and "<img" not in page


def test_report_refusals(lmm_fit, tmp_path):
    with pytest.raises(ArgumentTypeError, match="fitted model"):
        memoe.report("not a fit", tmp_path / "x.html")
    with pytest.raises(MemoeError, match="does not exist"):
        memoe.report(lmm_fit, tmp_path / "missing" / "x.html")
    with pytest.raises(ArgumentTypeError, match="path"):
        memoe.report(lmm_fit, 3)


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(name).exists():
            return name
    return shutil.which("chromium")


@pytest.mark.slow
def test_report_in_headless_chromium(lmm_fit, memoe_fit, tmp_path):
    """Open the page in a real browser: every image decodes (naturalWidth > 0) and the console has no error.

    The page itself has no script; the test appends one to a copy that records, after load, how many
    images decoded into an attribute of <body>, which ``--dump-dom`` then shows.
    """
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the browser check is skipped")
    probe = (
        "<script>window.addEventListener('load', () => { const im = Array.from(document.images);"
        " document.body.setAttribute('data-loaded', im.filter(i => i.complete && i.naturalWidth > 0).length"
        " + '/' + im.length); });</script>"
    )
    for name, fit in (("lmm", lmm_fit), ("memoe", memoe_fit)):
        page = memoe.report(fit, tmp_path / f"{name}.html").read_text(encoding="utf-8")
        n_img = page.count("<img")
        probed = tmp_path / f"{name}_probe.html"
        probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
        run = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--dump-dom", probed.as_uri()],
            capture_output=True, text=True, timeout=180,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        m = re.search(r'data-loaded="(\d+)/(\d+)"', run.stdout)
        assert m is not None, run.stdout[:500]
        assert (int(m.group(1)), int(m.group(2))) == (n_img, n_img)
        console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln]
        assert console == [], console
        assert "net::ERR" not in run.stderr
