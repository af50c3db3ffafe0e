"""The report in headless Chromium: no console errors, no outside requests, images render.

Drives Debian's ``chromium`` (installed by ``make test`` through .ci/sysdeps.list) over
the DevTools protocol on 127.0.0.1 with ``websocket-client`` (``dev`` extra). Skips
with a reason when either is missing or the browser cannot start.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.slow


class _Page:
    """A minimal DevTools-protocol client for one page target."""

    def __init__(self, ws):
        self.ws = ws
        self.n = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(e.get("method") == method for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {method} within {timeout} s")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, system_skip):
    """A headless Chromium with remote debugging on 127.0.0.1 (skips when unavailable)."""
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    if exe is None:
        system_skip("needs the Debian package 'chromium' (make test installs it via .ci/sysdeps.list)")
    websocket = pytest.importorskip("websocket", reason="needs websocket-client: pip install -e '.[dev]'")
    prof = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", f"--user-data-dir={prof}", "--window-size=1200,1600",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = prof / "DevToolsActivePort"
    end = time.monotonic() + 30
    while not port_file.exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.1)
    if not port_file.exists():
        proc.kill()
        system_skip(f"chromium did not start (exit code {proc.poll()}); cannot run browser checks")
    port = int(port_file.read_text().split()[0])

    def open_page():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        page = _Page(websocket.create_connection(url, timeout=60, suppress_origin=True))
        for dom in ("Page", "Network", "Runtime", "Log"):
            page.call(f"{dom}.enable")
        return page

    yield open_page
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _load(open_page, path: Path):
    page = open_page()
    page.call("Page.navigate", url=path.resolve().as_uri())
    page.wait_for("Page.loadEventFired")
    imgs = page.call("Runtime.evaluate", returnByValue=True, expression=(
        "JSON.stringify(Array.from(document.images).map(i => [i.complete, i.naturalWidth]))"))
    shot = page.call("Page.captureScreenshot", format="png")
    time.sleep(0.2)
    page.call("Runtime.evaluate", expression="1")              # drain late events
    requests = [e["params"]["request"]["url"] for e in page.events
                if e.get("method") == "Network.requestWillBeSent"]
    errors = [e for e in page.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    page.ws.close()
    import base64

    return json.loads(imgs["result"]["value"]), base64.b64decode(shot["data"]), requests, errors


def test_report_loads_offline_with_rendered_images(browser, tmp_path):
    """The report loads with no console errors or outside requests; images render; not blank."""
    from analyses import fit_counts, kaplan_meier
    from analyses import simulate_cohort as sim_stats
    from analyses.report import build_report
    from normative.deviations import critical_deviations

    s = sim_stats(n_patients=60, n_controls=40, seed=8)
    subj = s.subjects.reset_index()
    pat = subj.loc[subj["group"] == "patient"]
    zcols = ["Left-Thalamus", "Right-Thalamus", "Left-Putamen", "Right-Putamen"]
    rng = np.random.default_rng(8)
    z = subj[[]].assign(**{c: rng.normal(-0.8, 1, len(subj)) for c in zcols})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = build_report({"cohort": subj[["subject_id", "group", "age", "sex"]],
                            "deviations": critical_deviations(z),
                            "counts": fit_counts("n_crit ~ C(group)", subj),
                            "km": kaplan_meier(pat, "time_cdp", "event_cdp", group="high_risk")},
                           dpi=50)
    out = rep.save(tmp_path / "report.html")
    imgs, png, requests, errors = _load(browser, out)
    assert errors == []
    assert requests, "the navigation itself must be recorded"
    assert all(u == out.resolve().as_uri() or u.startswith("data:") for u in requests), requests
    assert len(imgs) == rep.summary()["n_figures"].sum() == 4
    assert all(ok and w > 0 for ok, w in imgs), imgs
    from matplotlib.image import imread

    pix = imread(io.BytesIO(png), format="png")
    assert pix.shape[0] > 100 and pix.shape[1] > 100
    assert float(pix[..., :3].var()) > 1e-3                      # not a blank page


def test_harness_detects_outside_requests_and_broken_images(browser, tmp_path):
    """The same checks flag a page that requests an outside URL and has a broken image."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><img src="http://127.0.0.1:9/x.png">'
                   "<script>console.error('boom')</script></body></html>")
    imgs, _, requests, errors = _load(browser, bad)
    assert any(u.startswith("http://127.0.0.1:9/") for u in requests)
    assert imgs == [[True, 0]]
    assert errors
