"""Headless Chromium (Debian's package) driven by Playwright; Playwright's own browser download is not used."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium():
    """One headless Chromium (starting it is most of a page test's time: share it, open a context per test)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (.ci/setup --test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def page_in(browser):
    """A fresh context (no cookies, storage or permissions from another test) and its page, with its console
    errors and page errors collected."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    try:
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        yield page, problems
    finally:
        context.close()


@contextmanager
def chromium_page():
    with chromium() as browser, page_in(browser) as opened:
        yield opened
