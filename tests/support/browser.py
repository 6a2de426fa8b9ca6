"""Headless Chromium driven over its DevTools protocol (CDP), for the /ui/ page tests.

A small client instead of Selenium: the tests need four things (open a page, evaluate a
script, wait for a DOM state, take a screenshot), all plain CDP commands over one
websocket; `websocket-client` is already installed (the Kubernetes client needs it), so
no driver process and no new dependency. Debian's `chromium` package provides the browser
(.ci/run installs it).

    with Browser(tmp_path) as b:
        b.open("http://127.0.0.1:15014/ui/")
        b.wait_for("document.querySelectorAll('#calls-table tbody tr').length > 0", "calls listed")
        b.screenshot(tmp_path / "ui.png")
"""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.support.harness import wait_for


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    raise AssertionError  # unreachable


class Browser:
    def __init__(self, workdir: Path, width: int = 1400, height: int = 1000):
        self.workdir = workdir
        self.size = (width, height)
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        profile = self.workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "chromium.log", "w+")
        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._log)
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip() != "", 30, what="chromium DevTools port")
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self._log.close()

    def call(self, method: str, **params: Any) -> dict:
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:  # events arrive in between; answers carry our id
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AssertionError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", f"{url} loaded")

    def eval(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {expression}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        """Wait until the expression is truthy in the page; its value."""
        got: list[Any] = [None]

        def holds() -> bool:
            got[0] = self.eval(expression)
            return bool(got[0])

        wait_for(holds, timeout, interval=0.25, what=lambda: f"{what} (page: {self.eval('document.body.innerText')[:1500]})")
        return got[0]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def reloads(self) -> int:
        """performance.navigation entries: how many times the document was loaded."""
        return int(self.eval("performance.getEntriesByType('navigation').length"))


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $MESHD_TEST_ARTIFACTS/<test dir> if set (CI keeps that), else the test's tmp dir."""
    import os

    base = os.environ.get("MESHD_TEST_ARTIFACTS")
    return Path(base) / tmp_path.name if base else tmp_path

