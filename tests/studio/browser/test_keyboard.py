"""The main forms work from the keyboard: Tab from the top of the page reaches each of their controls in order,
the skip link comes first and leads to the content, and a form submits with Enter."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect
from tests.studio.browser.conftest import Studio, sign_in

MAX_TABS = 80


def tab_order(page: Any, wanted: list[str]) -> list[str]:
    """Press Tab until every control in `wanted` (ids) had the focus, or MAX_TABS; returns the ids focused."""
    page.locator("body").focus()
    focused: list[str] = []
    for _ in range(MAX_TABS):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("() => document.activeElement.id || document.activeElement.className || "
                                     "document.activeElement.tagName"))  # fmt: skip
        if all(w in focused for w in wanted):
            break
    return focused


def reaches(page: Any, wanted: list[str]) -> None:
    focused = tab_order(page, wanted)
    missing = [w for w in wanted if w not in focused]
    assert missing == [], f"Tab never reached {missing}; it went through {focused}"
    order = [focused.index(w) for w in wanted]
    assert order == sorted(order), f"Tab reaches {wanted} out of order: {focused}"


def test_tab_reaches_the_main_form_controls(studio: Studio, new_page: Any) -> None:
    page = new_page()
    page.goto("/studio/sign-in")
    page.locator("body").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip-link"
    reaches(page, ["api_key"])
    page.keyboard.type(studio.tokens["dev"])
    page.keyboard.press("Enter")  # the sign-in form submits from the keyboard
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    page.goto("/studio/factory")
    reaches(page, ["f-datanet", "f-snapshot", "f-name", "f-rank", "f-epochs", "f-lr"])
    page.get_by_role("button", name="Start training").focus()
    expect(page.get_by_role("button", name="Start training")).to_be_focused()

    page.goto("/studio/playground")
    reaches(page, ["p-model", "p-mode", "p-rag", "p-message", "p-send"])

    owner = new_page()
    sign_in(owner, studio, "olga")
    owner.goto("/studio/datanets/-/new")
    reaches(owner, ["name", "license"])
