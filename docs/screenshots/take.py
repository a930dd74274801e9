"""Screenshots of the studio's pages at desktop (1280 px) and phone (390 px) width, into docs/screenshots/*.png.

    .venv/bin/python docs/screenshots/take.py [--model smollm2-135m-instruct]

Starts a `tally serve` on a temporary data directory (the same set-up as the browser tests), walks the user journey
of tests/studio/browser/test_user_journey.py in headless Debian Chromium (/usr/bin/chromium) so every page has
content, then photographs each page. Uses the pulled base model, so the playground's answer is a real one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="base model the server serves and trains")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright
    from tests.studio.browser import conftest as c
    from tests.studio.browser import test_user_journey as journey

    from tally.config import load_settings
    from tally.models import resolve_model

    resolve_model(args.model, load_settings().models.cache_dir)  # pulled (`tally models pull`), or say so now
    model = args.model
    with tempfile.TemporaryDirectory() as tmp, c.serve_studio(Path(tmp), model) as studio, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(c.CHROMIUM), headless=True)
        shoot(browser, studio, journey, Path(tmp))
        browser.close()


def shoot(browser: Any, studio: Any, journey: Any, tmp: Path) -> None:
    from tests.studio.browser.conftest import DESKTOP, PHONE, TIMEOUT_MS, sign_in

    def page_as(who: str) -> Any:
        context = browser.new_context(viewport=DESKTOP, base_url=studio.base)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        sign_in(page, studio, who)
        return page

    owner, alice, dev, carl = page_as("olga"), page_as("alice"), page_as("dev"), page_as("carl")
    bad, good = journey.files(tmp)
    journey.create_datanet(owner)
    journey.upload(alice, bad, good)
    journey.approve_and_snapshot(owner)
    journey.train(dev, dims="120")  # the projection splits its dims over the model's layers
    carl.goto(f"/studio/playground?model={journey.ADAPTER}")
    carl.get_by_label("Message").fill(journey.QUESTION + " Answer in one sentence.")
    carl.get_by_role("button", name="Send").click()
    carl.get_by_role("button", name="Verify receipt").click(timeout=300_000)
    carl.locator('.receipt-result[data-state="ok"]').wait_for()

    def snap(page: Any, name: str, path: str | None = None) -> None:
        if path is not None:
            page.goto(path)
        for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.screenshot(path=str(OUT / f"{name}-{label}.png"), full_page=True)
        page.set_viewport_size(DESKTOP)
        print(f"{name}: {page.url}")

    snap(carl, "playground")  # the answer as it stands after streaming, with shares and the verified receipt
    carl.get_by_role("link", name="attribution record").click()
    snap(carl, "attribution-record")
    snap(dev, "factory", "/studio/factory")
    dev.locator("table a.mono").first.click()
    snap(dev, "factory-run")
    snap(dev, "models", "/studio/models")
    snap(dev, "models-adapter", f"/studio/models/{journey.ADAPTER}")
    snap(owner, "datanets", "/studio/datanets")
    snap(owner, "datanet", f"/studio/datanets/{journey.SLUG}")
    snap(owner, "datanet-new", "/studio/datanets/-/new")
    snap(alice, "datanet-contribute", f"/studio/datanets/{journey.SLUG}/contribute")
    snap(owner, "datanet-review", f"/studio/datanets/{journey.SLUG}/review")
    snap(owner, "datanet-snapshots", f"/studio/datanets/{journey.SLUG}/snapshots")
    snap(owner, "datanet-diff", f"/studio/datanets/{journey.SLUG}/diff?from=v1&to=v1")
    snap(owner, "datanet-contributors", f"/studio/datanets/{journey.SLUG}/contributors")
    snap(owner, "datanet-access", f"/studio/datanets/{journey.SLUG}/access")
    snap(dev, "factory-leaderboard", "/studio/factory/leaderboard")
    snap(owner, "ledger", "/studio/ledger")
    snap(owner, "ledger-entry", "/studio/ledger/entries/1")
    snap(owner, "ledger-anchors", "/studio/ledger/anchors")
    snap(alice, "rewards", "/studio/rewards")
    snap(alice, "rewards-epochs", "/studio/rewards/epochs")
    alice.context.clear_cookies()
    snap(alice, "sign-in", "/studio/sign-in")


if __name__ == "__main__":
    main()
