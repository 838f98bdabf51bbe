"""Take the README's screenshots with what a user runs: `chatmem serve` on its defaults
(the embedded Redis and the embedded SmolLM2 model, as `make run`), driven in Chromium.

    .venv/bin/python docs/screenshots/take.py [--out docs/screenshots]

Slow on purpose: every reply is the real 135M model's (seconds each on a laptop CPU).
Look at each PNG before committing it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
PORT = 8765
URL = f"http://127.0.0.1:{PORT}"
REPLY_TIMEOUT_MS = 240_000


def start_server(data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATMEM_")}
    env["CHATMEM_DATA_DIR"] = str(data_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatmem", "serve", "--port", str(PORT)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(URL + "/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("chatmem serve did not become ready")


def send(page: Page, text: str) -> None:
    before = int(page.evaluate("document.body.dataset.turns || '0'"))
    page.fill("#input", text)
    page.press("#input", "Enter")
    expect(page.locator("body")).to_have_attribute(
        "data-turns", str(before + 1), timeout=REPLY_TIMEOUT_MS
    )
    expect(page.locator("#send")).to_be_visible()
    page.wait_for_timeout(500)  # the Markdown render


def click_turn(page: Page, selector: str) -> None:
    before = int(page.evaluate("document.body.dataset.turns || '0'"))
    page.locator(selector).click()
    expect(page.locator("body")).to_have_attribute(
        "data-turns", str(before + 1), timeout=REPLY_TIMEOUT_MS
    )
    page.wait_for_timeout(500)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1180, "height": 760})
                page.set_default_timeout(30_000)
                page.goto(URL + "/")
                page.wait_for_selector("body[data-ready=true]")
                send(page, "Hi Luna! I just adopted a kitten. Can you suggest three names?")
                page.screenshot(path=str(out / "chat.png"))

                click_turn(page, ".message-list > .message.assistant:last-child .regenerate")
                page.locator(".message-list > .message.assistant:last-child").hover()
                page.screenshot(path=str(out / "alternatives.png"))

                page.click("#open-context")
                page.wait_for_timeout(300)
                page.screenshot(path=str(out / "context.png"))
                page.click("#context-close")

                page.click("#open-settings")
                page.fill("#settings-temperature", "0.8")
                page.fill("#settings-display-name", "Sam")
                page.wait_for_timeout(300)
                page.screenshot(path=str(out / "settings.png"))
                page.click("#settings-save")
                expect(page.locator("#settings-dialog")).to_be_hidden()

                page.select_option("#character", "programmer")
                page.click("#new-session")
                send(page, "Write a Python function that reverses a string, with a docstring.")
                page.screenshot(path=str(out / "markdown-code.png"))

                page.click("#edit-character")
                page.wait_for_timeout(300)
                page.screenshot(path=str(out / "character-editor.png"))
                page.click("#ch-cancel")

                phone = browser.new_page(viewport={"width": 375, "height": 740})
                phone.goto(URL + "/")
                phone.wait_for_selector("body[data-ready=true]")
                phone.wait_for_timeout(800)
                phone.screenshot(path=str(out / "phone.png"))
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    for name in sorted(p.name for p in out.glob("*.png")):
        print(out / name)


if __name__ == "__main__":
    main()
