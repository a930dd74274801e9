"""The ledger's anchors page and the rewards claim with the chain on (the embedded EVM): the anchored size and root,
the claim's `to` and `data` a wallet sends (equal to what `tally.chain.claim_transaction` builds), the on-chain
balance and which epochs are claimed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.rewards.conftest import make_record
from tests.studio.conftest import Site, make_site
from typer.testing import CliRunner

from tally.chain import Chain, anchor_head, claim_payout, claim_transaction, settle_epoch
from tally.cli.main import app as cli
from tally.config import Settings, load_settings
from tally.ledger import open_ledger
from tally.rewards import DEFAULT_POLICY, accrue, close_epoch, payout_proof
from tally.store import open_store


@pytest.fixture
def chained(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Site, Settings]]:
    monkeypatch.setenv("TALLY_CHAIN__ENABLED", "true")
    on = load_settings()
    for site in make_site(on):
        yield site, on


def test_anchors_and_a_claim_on_the_embedded_chain(chained: tuple[Site, Settings]) -> None:
    from eth_account import Account

    site, settings = chained
    holder = Account.create()
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        accrue(s, ledger, make_record("chatcmpl-1", {holder.address: 1.0}), DEFAULT_POLICY)
    with store.transaction() as s:
        epoch = close_epoch(s, ledger).number
    chain = Chain(settings, store)
    anchored = anchor_head(chain, ledger)
    settle_epoch(chain, epoch)

    listed = site.client.get("/v1/chain/anchors").json()["data"]  # the API reads the same service
    assert [a["size"] for a in listed] == [anchored.size]
    printed = CliRunner().invoke(cli, ["chain", "anchors"])
    assert printed.exit_code == 0 and f"size {anchored.size} root" in printed.output
    page = site.client.get("/studio/ledger/anchors")
    assert page.status_code == 200 and "Chain disabled" not in page.text
    assert "LedgerAnchor" in page.text and f'<th scope="row" class="num">{anchored.size}</th>' in page.text

    with store.read() as s:
        expected = claim_transaction(chain, payout_proof(s, holder.address, epoch))
    claim = site.client.get("/studio/rewards/claim", params={"address": holder.address, "epoch": epoch})
    assert claim.status_code == 200
    assert expected["to"] in claim.text and expected["data"] in claim.text and 'id="claim-wallet"' in claim.text
    as_json = site.client.get(
        "/studio/rewards/claim", params={"address": holder.address, "epoch": epoch},
        headers={"Accept": "application/json"},
    )  # fmt: skip
    assert as_json.json()["to"] == expected["to"] and as_json.json()["data"] == expected["data"]

    before = site.client.get("/studio/rewards", params={"address": holder.address})
    assert "On-chain balance: <strong>0</strong>" in before.text and "unclaimed" in before.text
    claim_payout(chain, holder, epoch)
    after = site.client.get("/studio/rewards", params={"address": holder.address})
    assert "✓ claimed" in after.text and "On-chain balance: <strong>0</strong>" not in after.text
    store.dispose()
