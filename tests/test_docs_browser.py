"""The built documentation site in a headless browser: no console errors, no request leaving the machine.

The site is built with ``mkdocs build --strict`` into a temporary directory (skipped when mkdocs is not
installed: ``pip install ".[docs]"``), served on 127.0.0.1, and a few pages are opened in Chromium
(skipped with a message when there is no chromium binary). A probe script appended to each page copy
records, after load, every resource URL the page fetched (Resource Timing) in an attribute of <body>,
which ``--dump-dom`` shows. Chromium's net log (``--log-net-log``) records every request a page started,
including those that never got an answer; host resolution outside 127.0.0.1 is disabled, so nothing
actually leaves the machine while the test looks for a page that tries.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index.html", "guide/diagnostics.html", "from_r.html", "api/glmm.html", "tutorial_memoe.html"]
PROBE = (
    "<script>window.addEventListener('load', () => { setTimeout(() => {"
    " const urls = performance.getEntriesByType('resource').map(e => e.name);"
    " const im = Array.from(document.images);"
    " document.body.setAttribute('data-resources', JSON.stringify(urls));"
    " document.body.setAttribute('data-images', im.filter(i => i.complete && i.naturalWidth > 0).length"
    " + '/' + im.length); }, 500); });</script>"
)


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(name).exists():
            return name
    return shutil.which("chromium")


def _build(site: Path) -> None:
    pytest.importorskip("mkdocs", reason='mkdocs is not installed (pip install ".[docs]"); the site check is skipped')
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.slow
def test_built_site_static_checks(tmp_path):
    """Statically: no <script src>, <link href> or CSS url() in the built site points off the machine; no
    Sphinx role (``:class:``) or table-escaped pipe (``\\|``) is left in the rendered code (docs/hooks.py)."""
    site = tmp_path / "site"
    _build(site)
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)
    css_remote = re.compile(r"""(?:url\(|@import\s+)["']?(?:https?:)?//""", re.I)
    bad = []
    for f in site.rglob("*.html"):
        bad += [f"{f.relative_to(site)}: {m.group(0)}" for m in remote.finditer(f.read_text(encoding="utf-8"))]
    for f in site.rglob("*.css"):
        bad += [f"{f.relative_to(site)}: {m.group(0)}" for m in css_remote.finditer(f.read_text(encoding="utf-8"))]
    assert bad == [], bad[:20]
    leftovers = re.compile(r":(?:class|func|meth|mod|attr):<code>|<code>[^<]*\\\|[^<]*</code>")
    left = [f"{f.relative_to(site)}: {m.group(0)}" for f in site.rglob("*.html")
            for m in leftovers.finditer(f.read_text(encoding="utf-8"))]
    assert left == [], left[:20]


@pytest.mark.slow
def test_site_in_headless_chromium(tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the browser check is skipped")
    site = tmp_path / "site"
    _build(site)
    for page in PAGES:
        path = site / page
        path.write_text(path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        for page in PAGES:
            run = subprocess.run(
                [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
                 f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                 f"--log-net-log={tmp_path / 'net.json'}",
                 "--dump-dom", base + page],
                capture_output=True, text=True, timeout=180,
            )
            assert run.returncode == 0, run.stderr[-2000:]
            m = re.search(r'data-resources="([^"]*)"', run.stdout)
            assert m is not None, f"{page}: the probe did not run: {run.stdout[:500]}"
            urls = re.findall(r"&quot;(.*?)&quot;", m.group(1))
            off_machine = [u for u in urls if not u.startswith(base)]
            assert off_machine == [], f"{page} requested {off_machine}"
            started = _page_requests(tmp_path / "net.json", base.rstrip("/"))
            assert started, f"{page}: the net log recorded no request of the page"
            off_machine = [u for u in started if not u.startswith(base)]
            assert off_machine == [], f"{page} tried to fetch {off_machine}"
            assert urls, f"{page}: no resources recorded (stylesheets and the theme's script expected)"
            im = re.search(r'data-images="(\d+)/(\d+)"', run.stdout)
            assert im is not None and im.group(1) == im.group(2), f"{page}: images not decoded: {im and im.group(0)}"
            console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln]
            assert console == [], f"{page}: {console}"
            assert "net::ERR" not in run.stderr, f"{page}: {run.stderr[-2000:]}"
    finally:
        server.shutdown()
        server.server_close()


def _page_requests(net_log: Path, origin: str) -> list[str]:
    """URLs of the requests that pages served from ``origin`` started (Chromium's own traffic excluded)."""
    text = net_log.read_text(encoding="utf-8", errors="replace")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short at exit lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    host = origin.split("//", 1)[1].rstrip("/")
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        # a page's requests carry the page's site in their network isolation key (or the page as initiator);
        # the browser's own (update checks, ...) have no origin
        if event.get("type") == start and "url" in params and (
            host in str(params.get("network_isolation_key", "")) or str(params.get("initiator", "")).startswith(origin)
        ):
            urls.append(params["url"])
    return urls


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass
