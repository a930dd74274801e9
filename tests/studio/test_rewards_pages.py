"""Rewards pages: an account's balance and its statement paged newest first, payouts after an epoch closes, the
claim page with its proof (and 'chain disabled' when the chain is off), epochs; prepaid credit only for its own
account or an admin."""

from __future__ import annotations

import re

from tests.rewards.conftest import make_record
from tests.studio.conftest import Site

from tally.config import Settings
from tally.ledger import open_ledger
from tally.rewards import DEFAULT_POLICY, accrue, add_credit, close_epoch
from tally.store import open_store


def _earn(settings: Settings, site: Site, answers: int, *, close: bool = False) -> None:
    alice, carl = site.addresses["alice"], site.addresses["carl"]
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        for i in range(answers):
            accrue(s, ledger, make_record(f"chatcmpl-{i}", {alice: 0.6, carl: 0.4}), DEFAULT_POLICY)
        add_credit(s, ledger, alice, 5000, by="admin")
        if close:
            close_epoch(s, ledger)
    store.dispose()


def test_own_balance_and_statement(site: Site, settings: Settings) -> None:
    _earn(settings, site, 3)
    page = site.as_("alice").client.get("/studio/rewards")
    assert page.status_code == 200
    alice = site.addresses["alice"]
    assert f"Balance of <code>{alice}</code> (you)" in page.text
    assert page.text.count("<code>chatcmpl-") == 3 and "60.0%" in page.text and "unpaid" in page.text
    assert "Prepaid credit" in page.text and "5000" in page.text
    assert "No closed epoch pays this account yet" in page.text
    other = site.as_("carl").client.get("/studio/rewards", params={"address": alice})
    assert other.status_code == 200 and "Prepaid credit" not in other.text  # someone else's credit stays private
    anonymous = site.as_(None).client.get("/studio/rewards", params={"address": alice.lower()})
    assert anonymous.status_code == 200 and alice in anonymous.text  # earnings are public, as in the API
    assert "Enter an address" in site.client.get("/studio/rewards").text
    bad = site.client.get("/studio/rewards", params={"address": "0x123"})
    assert bad.status_code == 400 and "0x123" in bad.text


def test_statement_pages_by_keyset(site: Site, settings: Settings) -> None:
    _earn(settings, site, 60)
    site.as_("carl")
    first = site.client.get("/studio/rewards")
    assert first.text.count("<code>chatcmpl-") == 50
    assert "<code>chatcmpl-59</code>" in first.text and "<code>chatcmpl-0</code>" not in first.text
    older = re.search(r'href="(/studio/rewards\?[^"]+)" rel="next"', first.text)
    assert older is not None
    second = site.client.get(older.group(1).replace("&amp;", "&"))
    assert second.text.count("<code>chatcmpl-") == 10 and "<code>chatcmpl-0</code>" in second.text


def test_payouts_claim_and_epochs_with_the_chain_off(site: Site, settings: Settings) -> None:
    _earn(settings, site, 2, close=True)
    site.as_("alice")
    page = site.client.get("/studio/rewards")
    assert "Chain disabled." in page.text and "Proof</a>" in page.text
    claim = site.client.get("/studio/rewards/claim", params={"epoch": 1})
    assert claim.status_code == 200
    assert "Payout proof" in claim.text and "Chain disabled." in claim.text and "Epoch root" in claim.text
    as_json = site.client.get("/studio/rewards/claim", params={"epoch": 1}, headers={"Accept": "application/json"})
    assert as_json.status_code == 503 and "chain" in as_json.json()["error"]
    assert site.client.get("/studio/rewards/claim", params={"epoch": 9}).status_code == 404
    epochs = site.client.get("/studio/rewards/epochs")
    assert epochs.status_code == 200 and '<th scope="row" class="num">1</th>' in epochs.text
