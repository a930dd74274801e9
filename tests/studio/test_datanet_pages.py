"""Datanets pages: list and search, create, a datanet's page, upload with every bad line shown, dropping repeated
rows, the review queue (owner only, near-duplicates side by side), snapshots and their diff, access requests,
the contributor leaderboard."""

from __future__ import annotations

import json
import re

from tests.studio.conftest import Site

from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import open_store


def _jsonl(*rows: dict[str, str]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _row(i: int, text: str = "") -> dict[str, str]:
    return {
        "instruction": f"How do I make dish number {i}?",
        "output": text or f"Cook dish {i} slowly for {i} minutes.",
    }


def upload(site: Site, slug: str, data: bytes, name: str = "rows.jsonl", **fields: object):  # type: ignore[no-untyped-def]
    token = site.csrf(f"/studio/datanets/{slug}/contribute")
    return site.client.post(
        f"/studio/datanets/{slug}/contribute",
        data={"csrf": token, **fields},
        files={"file": (name, data, "application/jsonl")},
    )


def test_list_search_and_show(site: Site) -> None:
    site.as_("alice")
    page = site.client.get("/studio/datanets")
    assert page.status_code == 200
    assert "recipes" in page.text and "secrets" not in page.text  # a private datanet alice may not read
    found = site.client.get("/studio/datanets", params={"q": "CC-BY recipes"})
    assert "recipes" in found.text
    assert "No datanet" in site.client.get("/studio/datanets", params={"q": "nothing-like-this"}).text
    assert site.client.get("/studio/datanets", params={"q": "x" * 201}).status_code == 400
    show = site.client.get("/studio/datanets/recipes")
    assert show.status_code == 200
    for text in ("CC-BY-4.0", "rag, train", "Top contributors", "Snapshots", "Rows"):
        assert text in show.text
    assert site.client.get("/studio/datanets/secrets").status_code == 404  # existence does not leak
    assert site.as_("admin").client.get("/studio/datanets/secrets").status_code == 200


def test_create_form_names_the_field_at_fault(site: Site) -> None:
    site.as_("alice")
    assert site.client.get("/studio/datanets/-/new").status_code == 403  # the owner role creates datanets
    site.as_("olga")
    assert site.client.get("/studio/datanets/-/new").status_code == 200
    bad = site.post("/studio/datanets/-/new", {"name": "Bad Name", "kind": "instruction", "license": "MIT",
                                               "uses": ["train"]})  # fmt: skip
    assert bad.status_code == 400
    assert 'aria-invalid="true" aria-describedby="name-error"' in bad.text and "must be a slug" in bad.text
    bad_license = site.post("/studio/datanets/-/new", {"name": "fine", "kind": "instruction",
                                                       "license": "Not-A-License", "uses": ["train"]})  # fmt: skip
    assert bad_license.status_code == 400 and "license" in bad_license.text
    made = site.post(
        "/studio/datanets/-/new",
        {"name": "soups", "kind": "instruction", "license": "MIT", "uses": ["train", "eval"], "tags": "food, hot"},
        follow_redirects=False,
    )
    assert made.status_code == 303 and made.headers["location"].startswith("/studio/datanets/soups")
    assert "datanet soups created" in site.client.get(made.headers["location"]).text


def test_upload_shows_each_bad_line_beside_its_reason(site: Site) -> None:
    site.as_("alice")
    data = (
        json.dumps(_row(1)) + "\n" + "{not json\n" + json.dumps({"instruction": "", "output": "x"}) + "\n"
        + json.dumps(_row(4)) + "\n"
    ).encode()  # fmt: skip
    refused = upload(site, "recipes", data)
    assert refused.status_code == 400
    text = refused.text
    assert "Upload refused" in text and "2 lines to fix" in text
    assert "Line 2" in text and "invalid JSON" in text and "{not json" in text  # the line itself beside its reason
    assert "Line 3" in text and "field <code>instruction</code>" in text and "empty" in text
    assert "Drop the" not in text  # not only repeats: nothing to drop
    ok = upload(site, "recipes", _jsonl(_row(1), _row(2)))
    assert ok.status_code == 201 and "Uploaded" in ok.text and "pending" in ok.text


def test_htmx_upload_answers_with_the_result_alone(site: Site) -> None:
    site.as_("alice")
    token = site.csrf("/studio/datanets/recipes/contribute")
    answer = site.client.post(
        "/studio/datanets/recipes/contribute", data={"csrf": token},
        files={"file": ("rows.jsonl", b"[1]\n", "application/jsonl")}, headers={"HX-Request": "true"},
    )  # fmt: skip
    assert answer.status_code == 400
    assert "<html" not in answer.text and "Upload refused" in answer.text


def test_repeated_rows_are_dropped_in_one_step(site: Site) -> None:
    site.as_("alice")
    assert upload(site, "recipes", _jsonl(_row(1))).status_code == 201
    data = _jsonl(_row(1), _row(2), _row(2), _row(3), _row(2))
    refused = upload(site, "recipes", data)
    assert refused.status_code == 400
    assert "Every problem is a repeated row" in refused.text
    assert "Drop the 2 repeated rows" in refused.text  # lines 3 and 5 repeat line 2
    assert re.search(r'name="drop_duplicates" value="true" id="drop_duplicates" checked', refused.text)
    kept = upload(site, "recipes", data, drop_duplicates="true")
    assert kept.status_code == 201, kept.text
    text = kept.text
    assert "2 rows" in text and "Dropped lines (3)" in text
    assert (
        "Line 1: already in datanet" in text and "Line 3: repeats line 2" in text and "Line 5: repeats line 2" in text
    )
    again = upload(site, "recipes", _jsonl(_row(1)))
    assert again.status_code == 409 and "already in datanet" in again.text and "Drop the 1 repeated row" in again.text
    nothing_left = upload(site, "recipes", _jsonl(_row(1)), drop_duplicates="true")
    assert nothing_left.status_code == 409 and "nothing to add" in nothing_left.text


def test_review_queue_is_the_owners(site: Site) -> None:
    site.as_("alice")
    long = "Warm the pan, add the butter, stir in the onions and the garlic, let them soften, pour in the stock, "
    long += "simmer for twenty minutes and season with salt, pepper and a little lemon juice before serving it hot"
    upload(site, "recipes", _jsonl({"instruction": "How do I make the soup?", "output": long}))
    upload(site, "recipes", _jsonl({"instruction": "How do I make the soup?", "output": long + " again"}))
    assert site.client.get("/studio/datanets/recipes/review").status_code == 403
    assert site.post("/studio/datanets/recipes/review", {"decision": "accept", "rows": ["x"]}).status_code == 403
    site.as_("oscar")
    assert site.client.get("/studio/datanets/recipes/review").status_code == 403  # another owner
    site.as_("olga")
    queue = site.client.get("/studio/datanets/recipes/review")
    assert queue.status_code == 200
    hashes = re.findall(r'name="rows" value="([0-9a-f]{64})"', queue.text)
    assert len(hashes) == 2
    assert "Near-duplicate" in queue.text and "Row it resembles" in queue.text  # side by side
    no_reason = site.post("/studio/datanets/recipes/review", {"decision": "reject", "rows": hashes[:1]})
    assert no_reason.status_code == 400 and 'aria-describedby="reason-error"' in no_reason.text
    done = site.post("/studio/datanets/recipes/review", {"decision": "accept", "rows": hashes[:1]})
    assert done.status_code == 200 and "1 row(s) accepted" in done.text
    site.post("/studio/datanets/recipes/review", {"decision": "reject", "rows": hashes[1:], "reason": "too close"})
    assert "Nothing waits for review" in site.client.get("/studio/datanets/recipes/review").text
    rejected = site.as_("alice").client.get("/studio/datanets/recipes", params={"status": "rejected"})
    assert "too close" in rejected.text  # the contributor learns why


def test_snapshots_and_their_diff(site: Site) -> None:
    site.as_("olga")  # the owner's uploads are accepted at once
    upload(site, "recipes", _jsonl(_row(1), _row(2)))
    assert site.post("/studio/datanets/recipes/snapshots").status_code == 200
    upload(site, "recipes", _jsonl(_row(3)))
    made = site.post("/studio/datanets/recipes/snapshots")
    assert "snapshot v2 is the latest" in made.text
    site.as_("alice")
    assert site.post("/studio/datanets/recipes/snapshots").status_code == 403
    listing = site.client.get("/studio/datanets/recipes/snapshots")
    assert "v1" in listing.text and "v2" in listing.text and "Compare two snapshots" in listing.text
    diff = site.client.get("/studio/datanets/recipes/diff", params={"from": "v1", "to": "v2"})
    assert diff.status_code == 200
    assert "<strong>1</strong> added, <strong>0</strong> removed, 2 unchanged" in diff.text
    assert "dish number 3" in diff.text
    removed = site.client.get("/studio/datanets/recipes/diff", params={"from": "v2", "to": "v1", "side": "removed"})
    assert "dish number 3" in removed.text
    assert site.client.get("/studio/datanets/recipes/diff", params={"from": "v9"}).status_code == 404


def test_access_requests_and_grants(site: Site) -> None:
    site.as_("olga")
    assert "no request is needed" in site.client.get("/studio/datanets/recipes/access").text
    site.as_("carl")
    assert site.client.get("/studio/datanets/secrets").status_code == 404  # private: not even its name
    form = site.client.get("/studio/datanets/secrets/access")
    assert form.status_code == 200 and "You cannot read a datanet named" in form.text
    assert form.text == form.text.replace("secrets for tests", "")  # nothing of the datanet shows
    same = site.client.get("/studio/datanets/no-such-one/access")
    assert same.status_code == 200 and "You cannot read a datanet named" in same.text  # no existence oracle
    no_purpose = site.post("/studio/datanets/secrets/access", {"uses": ["train"], "purpose": " "})
    assert no_purpose.status_code == 400 and 'aria-describedby="purpose-error"' in no_purpose.text
    sent = site.post("/studio/datanets/secrets/access", {"uses": ["train"], "purpose": "fine-tune a helper"})
    assert sent.status_code == 200 and "request #1 sent" in sent.text and "pending" in sent.text
    site.as_("olga")
    assert site.post("/studio/datanets/secrets/access/1", {"decision": "grant"}).status_code == 404  # not hers
    site.as_("oscar")
    queue = site.client.get("/studio/datanets/secrets/access")
    assert "fine-tune a helper" in queue.text and "Grant" in queue.text
    no_reason = site.post("/studio/datanets/secrets/access/1", {"decision": "deny"})
    assert no_reason.status_code == 400 and "a denial needs a reason" in no_reason.text
    granted = site.post("/studio/datanets/secrets/access/1", {"decision": "grant"})
    assert granted.status_code == 200 and "request #1 granted" in granted.text
    site.as_("carl")
    assert site.client.get("/studio/datanets/secrets").status_code == 200  # the grant lets carl read it


def test_leaderboard(site: Site) -> None:
    site.as_("alice")
    upload(site, "recipes", _jsonl(_row(1), _row(2)))
    site.as_("olga")
    upload(site, "recipes", _jsonl(_row(3)))
    board = site.client.get("/studio/datanets/recipes/contributors")
    assert board.status_code == 200
    text = board.text
    assert text.index("olga") < text.index("alice")  # olga's row is accepted; alice's two wait for review


def test_signing_in_the_browser_wallet_or_on_the_server(site: Site, settings: Settings) -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        account, private_key = create_account(
            s, ledger, "wendy", ["contributor"], keys_dir=settings.account_keys_dir
        )  # the server keeps her key: `tally accounts create` on this machine
        _, site.tokens["wendy"] = create_api_key(s, ledger, account)
    store.dispose()
    assert private_key is not None
    site.as_("wendy")
    form = site.client.get("/studio/datanets/recipes/contribute")
    assert "key kept on this server" in form.text
    data = _jsonl(_row(1), _row(2))
    prepared = site.client.post(
        "/studio/datanets/recipes/contribute/prepare", headers={"X-CSRF-Token": site.csrf()},
        files={"file": ("rows.jsonl", data, "application/jsonl")},
    )  # fmt: skip
    assert prepared.status_code == 200, prepared.text
    body = prepared.json()
    typed = body["typed_data"]
    assert typed["domain"] == {"name": "Tally", "version": "1", "chainId": settings.chain_id}
    assert typed["primaryType"] == "Contribution" and typed["message"]["nonce"] == body["nonce"]
    assert isinstance(body["nonce"], str) and body["rows"] == 2 and body["address"] == account.address
    # what eth_signTypedData_v4 does in the wallet, over the JSON the page hands it
    signed = Account.sign_message(encode_typed_data(full_message=typed), private_key).signature.hex()
    ok = upload(site, "recipes", data, signature="0x" + signed.removeprefix("0x"), nonce=body["nonce"])
    assert ok.status_code == 201 and ", signed" in ok.text
    other = Account.create()
    forged = Account.sign_message(encode_typed_data(full_message=typed), other.key).signature.hex()
    refused = upload(site, "recipes", _jsonl(_row(3)), signature="0x" + forged.removeprefix("0x"), nonce="7")
    assert refused.status_code == 400 and "signature" in refused.text
    on_server = upload(site, "recipes", _jsonl(_row(4)), sign_on_server="true")
    assert on_server.status_code == 201 and ", signed" in on_server.text
    assert (
        site.client.post(
            "/studio/datanets/recipes/contribute/prepare", files={"file": ("rows.jsonl", data, "application/jsonl")}
        ).status_code
        == 403
    )  # the CSRF token is needed here too
