"""Headless Chromium for the browser tests (Playwright driving Debian's /usr/bin/chromium: nothing is
downloaded). `make setup` installs chromium where it is missing; a test skips only when no browser can be
installed (not root, no apt-get), and fails in CI, where setup must have installed it."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never write into the checkout: docs/screenshots is refreshed on purpose with
# POISONLAB_SCREENSHOTS=docs/screenshots make test.
SCREENSHOTS = Path(os.environ.get("POISONLAB_SCREENSHOTS") or Path(tempfile.gettempdir()) / "poisonlab-screenshots")
# The closed network refuses Chromium's background connections; these flags keep it from trying.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def chromium_path():
    for p in (os.environ.get("POISONLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
        if p and Path(p).is_file():
            return p
    return None


def launch_browser():
    """(playwright, browser) or a skip/fail with the reason."""
    path = chromium_path()
    reason = None
    if path is None:
        reason = "no Chromium: run `make setup` (as root it runs apt-get install -y chromium chromium-driver)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            reason = "the playwright package is missing: pip install -r requirements.txt"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"browser tests: {reason} (this machine can install it)")
        pytest.skip(reason)
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
    return pw, browser


def screenshot(page, name: str, full_page: bool = True):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)
