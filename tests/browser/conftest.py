"""Browser fixtures: Debian's chromium driven by playwright (headless) against a live server.

Playwright's own browser download cannot work offline, so the tests launch /usr/bin/chromium
(`make test` installs it with apt-get when root). Without playwright or chromium the tests
are skipped with the reason. Every request a page makes to another host is aborted and
recorded, so a page that needed a CDN fails its test.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import pytest

from tools.servers import Server

CHROMIUM = os.environ.get("MODELMILL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]' (make test does)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (make test does when root)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # One torch thread: the machine is small and shared, and OpenMP threads stall when cores are busy.
    s = Server(tmp_path_factory.mktemp("home"), env={"OMP_NUM_THREADS": "1"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client


class PageProblems:
    """What went wrong in a page: JS errors and requests that left 127.0.0.1."""

    def __init__(self):
        self.errors: list[str] = []
        self.offsite: list[str] = []


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=f"http://127.0.0.1:{server.port}")
    problems = PageProblems()

    def only_local(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            problems.offsite.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.on("pageerror", lambda e: problems.errors.append(str(e)))
    pg.problems = problems
    yield pg
    context.close()
    assert not problems.offsite, f"pages fetched from other hosts: {problems.offsite}"
    assert not problems.errors, f"JavaScript errors: {problems.errors}"
