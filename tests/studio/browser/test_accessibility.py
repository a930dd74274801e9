"""axe-core (npm) on every studio page, at desktop (1280 px) and phone (390 px) width: no serious or critical
violation. The pages are found as a user finds them: every /studio link reachable from the front page, signed in
as an admin, a datanet owner and a consumer (one page per kind of path), plus the sign-in page, a playground answer
with its shares and verified receipt, and that answer's attribution record."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit

from playwright.sync_api import expect
from tests.studio.browser.conftest import DESKTOP, PHONE, TIMEOUT_MS, Studio, run_axe, sign_in

MAX_PAGES = 60  # kinds of page; far more than the studio has, so the crawl never silently stops short
SKIP = ("/studio/static/", "/studio/vendor/", "/studio/sign-out")
ID_SEGMENT = re.compile(r"^(0x[0-9a-fA-F]{40}|[0-9a-f]{8,}|\d+|chatcmpl-\w+|ftjob-\w+|v\d+)$")
SECTIONS = ("/studio/", "/studio/datanets", "/studio/factory", "/studio/models", "/studio/playground",
            "/studio/ledger", "/studio/rewards")  # fmt: skip


def kind_of(path: str) -> str:
    """/studio/factory/runs/ftjob-1 and /studio/factory/runs/ftjob-2 are one kind of page."""
    parts = urlsplit(path)
    segments = ["{id}" if ID_SEGMENT.match(s) else s for s in parts.path.split("/")]
    keys = sorted(k.split("=")[0] for k in parts.query.split("&")) if parts.query else []
    return "/".join(segments) + ("?" + "&".join(keys) if keys else "")


class Checker:
    """Runs axe on the page in front of it at both widths, collecting what it finds."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked: list[str] = []

    def check(self, page: Any, where: str) -> None:
        for viewport in (DESKTOP, PHONE):
            page.set_viewport_size(viewport)
            for v in run_axe(page):
                self.problems.append(f"{where} at {viewport['width']} px: {v['impact']} {v['id']} ({v['help']}) "
                                     f"at {v['nodes']}")  # fmt: skip
        page.set_viewport_size(DESKTOP)
        self.checked.append(where)


def crawl(page: Any, studio: Studio, seen: set[str], checker: Checker, who: str) -> None:
    """Breadth-first over the studio's links, checking each kind of page the first time it is reached."""
    queue = ["/studio/"]
    visited: set[str] = set()
    while queue and len(seen) < MAX_PAGES:
        path = queue.pop(0)
        if path in visited:
            continue
        visited.add(path)
        response = page.goto(path)
        assert response is not None and response.status < 500, f"{path}: {response and response.status}"
        html = "text/html" in response.headers.get("content-type", "")
        if response.status >= 400 or not html or page.url.rstrip("/").endswith("/sign-in"):
            continue  # a refusal, a download (receipt JSON, a snapshot's data) or a page for someone else
        if kind_of(path) not in seen:
            seen.add(kind_of(path))
            checker.check(page, f"{path} (as {who})")
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            target = urlsplit(urljoin(studio.base + path, href))
            local = target.path + (f"?{target.query}" if target.query else "")
            if target.netloc != urlsplit(studio.base).netloc or not target.path.startswith("/studio"):
                continue
            if local.startswith(SKIP) or kind_of(local) in seen or local in visited:
                continue
            queue.append(local)


def test_every_studio_page_has_no_serious_accessibility_violation(browser: Any, studio: Studio) -> None:
    checker, seen = Checker(), set[str]()
    contexts = []

    def signed_in(who: str | None) -> Any:
        # axe is injected as a script, which the studio's Content-Security-Policy would refuse
        context = browser.new_context(viewport=DESKTOP, base_url=studio.base, bypass_csp=True)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        if who is not None:
            sign_in(page, studio, who)
        return page

    try:
        page = signed_in(None)
        page.goto("/studio/sign-in")
        checker.check(page, "/studio/sign-in (signed out)")
        for who in ("admin", "olga", "carl"):
            page = signed_in(who)
            crawl(page, studio, seen, checker, who)
        missing = [s for s in SECTIONS if s not in seen]
        assert missing == [], f"the crawl did not reach {missing}: {sorted(seen)}"
        # the playground with an answer, its shares and verified receipt (drawn after the answer streams)
        page.goto("/studio/playground")
        page.get_by_label("Model").select_option(index=0)
        page.get_by_label("Message").fill("Hello")
        page.get_by_label("Max tokens").fill("4")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("button", name="Verify receipt")).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Verify receipt").click()
        expect(page.locator(".receipt-result")).to_have_attribute("data-state", "ok")
        checker.check(page, "/studio/playground with an answer")
        page.get_by_role("link", name="attribution record").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Attribution record")
        checker.check(page, "the attribution record page")
        # a row as an answer's record links it (the journey clicks such a link)
        listed = studio.api("GET", "/v1/datanets/glass-facts/rows", "olga").json()["data"]
        page.goto(f"/studio/playground/rows/glass-facts/{listed[0]['row_hash']}")
        expect(page.get_by_role("heading", level=1)).to_contain_text("of glass-facts")
        checker.check(page, "a row an answer cites")
    finally:
        for context in contexts:
            context.close()
    print(f"axe at 1280 and 390 px on {len(checker.checked)} pages: {checker.checked}")
    assert checker.problems == [], "\n".join(checker.problems)
