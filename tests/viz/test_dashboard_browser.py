"""Open an exported dashboard in real headless Chromium: every plot draws, no JS errors, screenshot.

Chromium (Debian package `chromium`) is installed by the CI set-up. Locally the test skips with a
reason when it is absent; with CI=true a missing browser is a failure.
The screenshot goes to the test's tmp dir, and also to $INTROSPECT_MECH_SCREENSHOT_DIR when set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _viz_synthetic import make_synthetic_run

from introspect_mech.viz import export_dashboard

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--virtual-time-budget=20000"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium not found, and CI=true: install it (apt-get install -y chromium)")
    pytest.skip("chromium not installed (apt-get install -y chromium); skipped outside CI only")


# Test-only instrumentation, injected into a copy of the exported page (users' dashboards never carry
# it): records script errors and, once the page has loaded, how many plots drew an SVG, as <body>
# attributes the dumped DOM shows.
CHECK_JS = """
window.__dashErrors=[];
window.addEventListener('error',function(e){window.__dashErrors.push(String(e.message));
 var el=document.getElementById('js-errors');
 if(!el && document.body){el=document.createElement('div'); el.id='js-errors'; document.body.appendChild(el);}
 if(el){el.textContent=window.__dashErrors.join('\\n');}
 document.body && document.body.setAttribute('data-js-errors', String(window.__dashErrors.length));});
window.addEventListener('load',function(){setTimeout(function(){
 var divs=document.querySelectorAll('.plotly-graph-div'), ok=0;
 divs.forEach(function(d){ if(d.querySelector('svg.main-svg') && d._fullLayout){ok++;} });
 document.body.setAttribute('data-plots-expected', String(divs.length));
 document.body.setAttribute('data-plots-rendered', String(ok));
 document.body.setAttribute('data-js-errors', String(window.__dashErrors.length));
},300);});
"""


def _instrumented(html: Path, out: Path, edit=lambda t: t) -> str:
    """A copy of the dashboard with CHECK_JS as the first script of <head>; returns its file URL."""
    text = html.read_text(encoding="utf-8")
    assert "__dashErrors" not in text  # the shipped page carries no test code
    head = text.index("<head>") + len("<head>")
    out.write_text(edit(text[:head] + f"<script>{CHECK_JS}</script>" + text[head:]), encoding="utf-8")
    return out.resolve().as_uri()


def _run(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _console_errors(stderr: str) -> list[str]:
    """Page console errors as Chromium logs them with --enable-logging=stderr (CONSOLE lines)."""
    return [ln for ln in stderr.splitlines()
            if "CONSOLE" in ln and re.search(r"error|uncaught|exception", ln, re.I)]


def test_dashboard_renders_in_chromium(tmp_path):
    browser = _chromium()
    run = make_synthetic_run(tmp_path / "run")
    html = export_dashboard(run, tmp_path / "dashboard.html")
    url = _instrumented(html, tmp_path / "dashboard_checked.html")

    dom = _run(browser, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, "no <body> in the dumped DOM"
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(0)))
    # 9 + introspection (4) + self-report track (1) + organisms (2) + answer typology (1)
    assert attrs.get("plots-expected") == "17", body.group(0)
    assert attrs.get("plots-rendered") == "17", f"not every plot drew an SVG: {body.group(0)}"
    assert attrs.get("js-errors") == "0", re.search(r'<div id="js-errors">(.*?)</div>', dom.stdout, re.S)
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    # plotly drew real marks: bars, heatmap image, scatter points, table cells
    for mark in ('class="trace bars"', 'class="hm"', 'class="point"', 'class="cell-text"'):
        assert mark in dom.stdout, mark

    shot = tmp_path / "dashboard.png"
    res = _run(browser, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", url)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a blank page is a few KB
    if out := os.environ.get("INTROSPECT_MECH_SCREENSHOT_DIR"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out) / "dashboard_synthetic.png")


def test_broken_figure_is_reported_by_the_page(tmp_path):
    """The render check itself can fail: a page whose plot throws is caught by the DOM check."""
    browser = _chromium()
    run = make_synthetic_run(tmp_path / "run", panels={"probes"})
    html = export_dashboard(run, tmp_path / "dashboard.html")
    url = _instrumented(html, tmp_path / "dashboard_checked.html",
                        lambda t: t.replace("Plotly.newPlot(", "Plotly.newPlotTypo(", 1))
    dom = _run(browser, tmp_path, "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-plots-rendered="0"' in body and 'data-js-errors="1"' in body, body
