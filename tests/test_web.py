"""`messenger web` in a real headless Chromium (Debian's, driven by Playwright): sign in, send, see the reply.

Nothing here downloads a browser: Playwright is pointed at /usr/bin/chromium
(installed by .ci/run), and every request the page makes beyond loopback
(textual-serve's web font) is blocked before it leaves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from grpc_messenger.cli.web import check_web_exposure
from grpc_messenger.client.sync import Messenger
from grpc_messenger.config import ClientConfig
from grpc_messenger.errors import InvalidInput
from tests.conftest import ReplicaFactory, queued_keys, wait_until

CHROMIUM = Path(os.environ.get("MESSENGER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # belt and braces: no name resolves but loopback's
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
WAIT_S = 60.0
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screens" / "web.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_web_refuses_other_addresses_without_auth() -> None:
    assert check_web_exposure("127.0.0.1", auth=False, insecure=False) is None
    assert check_web_exposure("0.0.0.0", auth=True, insecure=False) is None
    with pytest.raises(InvalidInput, match="without --auth"):
        check_web_exposure("0.0.0.0", auth=False, insecure=False)
    warning = check_web_exposure("192.0.2.1", auth=False, insecure=True)
    assert warning is not None
    assert "INSECURE" in warning
    refused = subprocess.run(
        [sys.executable, "-m", "grpc_messenger", "web", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 2
    assert "without --auth" in refused.stderr


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (installed by .ci/run)")
def test_web_page_signs_in_sends_and_shows_the_reply(replica_factory: ReplicaFactory, tmp_path: Path) -> None:
    """A browser signs in as ann and writes to bob; bob (the library) answers; the page shows the answer."""
    from playwright.sync_api import Route, sync_playwright

    replica = replica_factory.replica()
    port = free_port()
    env = {**os.environ, "MESSENGER_SERVERS": replica.address, "MESSENGER_HOME": str(tmp_path / "web-home")}
    env.pop("MESSENGER_TOKEN", None)
    server = subprocess.Popen(
        # the page's app gets this deadline too: no send of a loaded machine runs into it
        [sys.executable, "-m", "grpc_messenger", "--timeout", repr(WAIT_S), "web", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the app processes it starts stop with it
    )
    url = f"http://127.0.0.1:{port}/"
    screen = bytearray()
    try:
        wait_until(lambda: _answers(url), timeout_s=WAIT_S, interval_s=0.2)
        bob_config = ClientConfig(servers=(replica.address,), data_dir=tmp_path / "bob", timeout_s=WAIT_S)
        with Messenger(bob_config) as bob, bob.subscribe("bob@example.org") as inbox, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 860})

                def loopback_only(route: Route) -> None:
                    host = route.request.url.split("/")[2].rsplit(":", 1)[0]
                    route.continue_() if host in ("127.0.0.1", "localhost") else route.abort()

                page.route("**/*", loopback_only)
                page.on("websocket", lambda ws: ws.on("framereceived", lambda data: _keep(screen, data)))
                page.goto(url)

                def shows(text: str) -> None:
                    # the sync API delivers frames only while it is called: wait through the page
                    deadline = time.monotonic() + WAIT_S
                    while text.encode() not in screen:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"the page never showed {text!r}: {bytes(screen[-600:])!r}")
                        page.wait_for_timeout(100)

                shows("Sign in")
                page.mouse.click(700, 400)  # focus the terminal
                page.keyboard.type("ann@example.org")
                page.keyboard.press("Enter")

                def restyled(text: str, key: str) -> None:
                    # the app routes each key to the pane focused when the key arrives, so after a key
                    # that moves the focus, wait until the page draws `text` in its new (un)focused look
                    before = _look(screen, text)
                    page.keyboard.press(key)
                    deadline = time.monotonic() + WAIT_S
                    while _look(screen, text) == before:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"{key} never changed how the page draws {text!r}")
                        page.wait_for_timeout(50)

                shows("Conversations")
                # typed as a person would, a look at each field after each key that moves the focus
                restyled("to: name@example.org", "n")  # the address field's placeholder, now focused
                page.keyboard.type("bob@example.org", delay=20)
                shows("bob@example.org")
                restyled("bob@example.org", "Tab")  # the address field, no longer focused
                page.keyboard.type("ping from the browser", delay=20)
                shows("ping from the browser")
                page.keyboard.press("Control+s")
                shows("stored on 1/1")
                question = inbox.next(timeout_s=WAIT_S)
                assert question is not None
                assert question.sender == "ann@example.org"
                assert question.body == "ping from the browser"
                bob.send(sender="bob@example.org", recipient="ann@example.org", body="pong from bob")
                shows("pong from bob")
                # the page's app stored and acked it, as any reader does
                wait_until(lambda: not queued_keys(replica.address, "ann@example.org"), timeout_s=WAIT_S)
                time.sleep(0.5)  # let the last frames paint before the picture
                shot = tmp_path / "web.png"
                page.screenshot(path=str(shot))
                if os.environ.get("MESSENGER_UPDATE_SCREENSHOTS"):
                    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shot, SCREENSHOT)
            finally:
                browser.close()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        _stop_group(server.pid)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _look(screen: bytearray, text: str) -> bytes:
    """The terminal style (colours) the page last drew `text` in; empty if never drawn."""
    data = bytes(screen)
    at = data.rfind(text.encode())
    return data[data.rfind(b"\x1b[", 0, at) : at] if at >= 0 else b""


def _keep(screen: bytearray, data: str | bytes) -> None:
    screen.extend(data.encode() if isinstance(data, str) else data)
    del screen[: max(0, len(screen) - 4_000_000)]  # bounded


def _stop_group(pgid: int) -> None:
    # app processes of the page, if any outlived the server (same group, started by this test)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
