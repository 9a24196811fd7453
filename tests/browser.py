"""A real browser for tests: Debian's headless ``chromium`` driven over the DevTools protocol (a websocket and
JSON commands; ``websockets`` is already a dependency, so nothing else is installed for it).

    async with Chromium.launch(tmp_path) as browser:
        await browser.goto("file:///…/contact_sheet.html")
        n = await browser.eval("document.querySelectorAll('.card').length")
        await browser.click("#sort-dir")
        png = await browser.screenshot()

Without chromium the test is skipped locally and fails in CI (CI=true): scripts/install.sh installs it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import websockets

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    msg = "no chromium on PATH: run scripts/install.sh (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)
    raise AssertionError  # unreachable


class Chromium:
    def __init__(self, proc: subprocess.Popen[bytes], ws: Any) -> None:
        self.proc = proc
        self.ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.console: list[str] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path, *, width: int = 1280, height: int = 800):  # type: ignore[no-untyped-def]
        profile.mkdir(parents=True, exist_ok=True)
        args = [
            chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--mute-audio", "--hide-scrollbars",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            "about:blank",
        ]
        log = (profile / "chromium.log").open("wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            port_file = profile / "DevToolsActivePort"
            for _ in range(300):
                if port_file.is_file() and port_file.read_text().strip():
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode}: "
                                       f"{(profile / 'chromium.log').read_text()[-2000:]}")
                await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            page_ws = await _page_target(port)
            async with websockets.connect(page_ws, max_size=None) as ws:
                browser = cls(proc, ws)
                await browser.send("Page.enable")
                await browser.send("Runtime.enable")
                yield browser
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result") or {}
            self._event(msg)

    def _event(self, msg: dict[str, Any]) -> None:
        self._events.append(msg)
        if msg.get("method") == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in msg["params"]["args"]))
        if msg.get("method") == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(msg["params"]["exceptionDetails"])[:500])

    async def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for i, e in enumerate(self._events):
            if e.get("method") == method:
                return self._events.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - loop.time())))
            if msg.get("method") == method:
                return msg
            self._event(msg)

    async def goto(self, url: str) -> None:
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def eval(self, expression: str) -> Any:
        """Evaluate in the page (promises awaited) and return the value as JSON."""
        res = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Until ``expression`` is truthy in the page (polled every 50 ms): its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                value = await self.eval(expression)
            except RuntimeError:  # the page is navigating (reload): its context is gone for a moment
                value = None
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"still falsy after {timeout} s: {expression}")
            await asyncio.sleep(0.05)

    async def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the element."""
        box = await self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise AssertionError(f"no element matches {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        await self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.eval(f"document.querySelector({json.dumps(selector)}).select?.()")
        await self.send("Input.insertText", text=text)

    async def screenshot(self) -> bytes:
        res = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(res["data"])


async def _page_target(port: int) -> str:
    import httpx

    async with httpx.AsyncClient() as http:
        for _ in range(100):
            try:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            except httpx.HTTPError:
                targets = []
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)
    raise RuntimeError("chromium has no page target")
