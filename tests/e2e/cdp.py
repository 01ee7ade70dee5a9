"""A small Chrome DevTools Protocol client: headless Chromium driven over its own WebSocket.

Enough for the GraphiQL test (navigate, evaluate, click, type, keys, screenshot) without a
browser download: it runs Debian's `chromium`. Flags keep it off the (closed) network, since
otherwise it hangs on background connections that are refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets

CHROMIUM_MISSING = (
    "Chromium is needed for the GraphiQL browser test and was not found: install it with "
    "`apt-get install -y chromium` (Debian's package, /usr/bin/chromium; .ci/run installs it), "
    "or point CHROMIUM at a Chromium/Chrome binary."
)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    candidate = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return candidate if Path(candidate).exists() else None


class CDPError(RuntimeError):
    pass


class Page:
    """One tab, attached with a flat session on the browser's connection."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session_id=self.session_id, **params)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in answer:
            raise CDPError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, within_s: float = 30.0) -> Any:
        """Poll until the expression is truthy (generous: the test machine is shared and slow)."""
        deadline = time.monotonic() + within_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {within_s}s for {expression}; console: {self.console()}")
            await asyncio.sleep(0.1)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (focus and React handlers as for a user)."""
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " const r = e.getBoundingClientRect(); return r.width ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def type(self, text: str) -> None:
        await self.send("Input.insertText", text=text)

    async def select_all(self) -> None:
        # Ctrl-A as keystrokes: CodeMirror handles its own keymap on keydown.
        await self.send(
            "Input.dispatchKeyEvent",
            type="rawKeyDown",
            modifiers=2,
            key="a",
            code="KeyA",
            windowsVirtualKeyCode=65,
            commands=["selectAll"],
        )
        await self.send(
            "Input.dispatchKeyEvent", type="keyUp", modifiers=2, key="a", code="KeyA", windowsVirtualKeyCode=65
        )

    async def screenshot(self, path: Path) -> None:
        answer = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(answer["data"]))

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def console(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log entries (CSP violations among them)."""
        lines = []
        for event in self.events:
            params = event["params"]
            if event["method"] == "Runtime.exceptionThrown":
                lines.append(f"exception: {params['exceptionDetails'].get('exception', {}).get('description')}")
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
                lines.append(
                    f"console.{params['type']}: "
                    + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                lines.append(f"log: {params['entry']['text']}")
        return lines


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, connection: Any, profile: str) -> None:
        self.process = process
        self.connection = connection
        self.profile = profile
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pages: dict[str, Page] = {}
        self.reader = asyncio.create_task(self._read())

    async def send(self, method: str, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[message_id] = future
        await self.connection.send(json.dumps(message))
        return await asyncio.wait_for(future, 30)

    async def _read(self) -> None:
        async for raw in self.connection:
            message = json.loads(raw)
            if "id" in message:
                future = self.pending.pop(message["id"], None)
                if future is None or future.done():
                    continue
                if "error" in message:
                    future.set_exception(CDPError(str(message["error"])))
                else:
                    future.set_result(message.get("result", {}))
            elif message.get("sessionId") in self.pages:
                self.pages[message["sessionId"]].events.append(message)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(self, attached["sessionId"])
        self.pages[page.session_id] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.send(f"{domain}.enable")
        return page


async def _devtools_url(process: asyncio.subprocess.Process, within_s: float = 30.0) -> str:
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(process.stderr.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            break
        text = line.decode(errors="replace")
        seen.append(text)
        found = re.search(r"DevTools listening on (ws://\S+)", text)
        if found:
            return found.group(1)
    raise RuntimeError("Chromium did not start its DevTools endpoint:\n" + "".join(seen[-20:]))


async def _drain(stream: asyncio.StreamReader | None) -> None:
    # Chromium keeps logging on stderr; an unread pipe would fill and stall it.
    while stream is not None and await stream.readline():
        pass


@contextlib.asynccontextmanager
async def launch(executable: str) -> AsyncIterator[Browser]:
    profile = tempfile.mkdtemp(prefix="cs-chromium-")
    process = await asyncio.create_subprocess_exec(
        executable,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    drain: asyncio.Task[None] | None = None
    browser: Browser | None = None
    try:
        url = await _devtools_url(process)
        drain = asyncio.create_task(_drain(process.stderr))
        connection = await websockets.connect(url, max_size=None)
        browser = Browser(process, connection, profile)
        yield browser
    finally:
        if browser is not None:
            await browser.connection.close()
            browser.reader.cancel()
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()
        shutil.rmtree(profile, ignore_errors=True)
