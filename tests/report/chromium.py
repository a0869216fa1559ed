"""Open a file in real headless Chromium over the DevTools protocol pipe and record what the page did.

``--dump-dom`` and ``--enable-logging`` show console messages but not network requests, so the tests drive Chromium
through ``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-terminated JSON) and collect every request the page
makes, every console message, log entry (CSP violations land there) and uncaught exception, then the final DOM.
Name resolution is mapped to nothing, so even a request that slipped through could not reach anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class PageVisit:
    """What Chromium saw while loading one page."""

    dom: str = ""
    requests: list[str] = field(default_factory=list)  # every URL requested but the page itself
    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text) of console calls and log entries
    exceptions: list[str] = field(default_factory=list)
    section_ids: list[str] = field(default_factory=list)
    printed: dict[str, Any] = field(default_factory=dict)  # expression -> value with print media emulated

    @property
    def errors(self) -> list[str]:
        return [text for level, text in self.console if level in ("error", "warning", "assert")] + self.exceptions


def chromium_binary() -> str:
    """The Chromium the report is checked in; fail (not skip) without it: the report's promise is untested."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run `make system-packages` (Debian package chromium)")
    return binary


class _Pipe:
    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.to_browser, self.from_browser = to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        return self.next_id

    def read(self, deadline: float) -> dict[str, Any] | None:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.from_browser], [], [], remaining)[0]:
                return None
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + 30
        while (message := self.read(deadline)) is not None:
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)
        raise TimeoutError(f"no answer to {method}")

    def wait_for(self, method: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        if any(event.get("method") == method for event in self.events):
            return
        while (message := self.read(deadline)) is not None:
            self.events.append(message)
            if message.get("method") == method:
                return

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (message := self.read(deadline)) is not None:
            self.events.append(message)


#: Resolves once the page matches print media (checked every 10 ms) and two frames have been rendered with it (a
#: closed <details>' content-visibility is settled in a rendering update), or after 5 s whatever it matches.
_PRINT_MEDIA_APPLIED = """new Promise(resolve => {
  const started = Date.now();
  const rendered = () => requestAnimationFrame(() => requestAnimationFrame(() => resolve(true)));
  const poll = () => matchMedia('print').matches ? rendered()
    : Date.now() - started > 5000 ? resolve(false) : setTimeout(poll, 10);
  setTimeout(() => resolve(matchMedia('print').matches), 5000);
  poll();
})"""


def visit(path: Path, tmp_path: Path, print_checks: tuple[str, ...] = ()) -> PageVisit:
    """Load ``path`` in headless Chromium and return its requests, console output, exceptions and DOM.

    ``print_checks`` are JavaScript expressions evaluated afterwards with print media emulated (as when printing to
    PDF); their values land in ``printed``.
    """
    binary = chromium_binary()
    to_browser_read, to_browser_write = os.pipe()
    from_browser_read, from_browser_write = os.pipe()
    command = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "about:blank",
    ]  # fmt: skip

    def map_pipes() -> None:  # Chromium reads commands on fd 3 and writes answers on fd 4
        commands = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
        answers = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
        os.dup2(commands, 3)
        os.dup2(answers, 4)

    process = subprocess.Popen(
        command, preexec_fn=map_pipes, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=False,
    )  # fmt: skip
    os.close(to_browser_read)
    os.close(from_browser_write)
    pipe = _Pipe(to_browser_write, from_browser_read)
    page = PageVisit()
    url = path.resolve().as_uri()
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Page.navigate", {"url": url}, session=session)
        pipe.wait_for("Page.loadEventFired", 30)
        pipe.drain(0.5)  # late console messages and requests
        dom = pipe.call(
            "Runtime.evaluate", {"expression": "document.documentElement.outerHTML", "returnByValue": True}, session
        )
        page.dom = dom["result"]["value"]
        ids = pipe.call(
            "Runtime.evaluate",
            {"expression": "[...document.querySelectorAll('section[id]')].map(s => s.id)", "returnByValue": True},
            session,
        )
        page.section_ids = ids["result"]["value"]
        if print_checks:
            pipe.call("Emulation.setEmulatedMedia", {"media": "print"}, session)
            # The renderer may apply the emulated media after the call returns (seen on a loaded machine): wait until
            # the page itself sees print media before asking what it shows.
            pipe.call("Runtime.evaluate", {"expression": _PRINT_MEDIA_APPLIED, "awaitPromise": True}, session)
            for expression in print_checks:
                value = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
                page.printed[expression] = value["result"].get("value")
        for event in pipe.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent" and params["request"]["url"] not in (url, "about:blank"):
                page.requests.append(params["request"]["url"])
            elif method == "Runtime.consoleAPICalled":
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                page.console.append((params.get("type", ""), text))
            elif method == "Log.entryAdded":
                page.console.append((params["entry"].get("level", ""), params["entry"].get("text", "")))
            elif method == "Runtime.exceptionThrown":
                page.exceptions.append(json.dumps(params.get("exceptionDetails", {}))[:500])
        with contextlib.suppress(TimeoutError, RuntimeError, OSError):
            pipe.call("Browser.close")
    finally:
        os.close(to_browser_write)
        os.close(from_browser_read)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return page
