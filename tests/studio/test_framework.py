"""The studio's framework: sign-in and sign-out, the session cookie's flags, CSRF refusals, the access policy on
pages, error pages, static files, security headers, the root path and every page declaring its rule."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from tests.studio.conftest import BASE, Site, make_site

from tally.api import create_app, policy
from tally.config import Settings
from tally.identity import revoke_api_key
from tally.identity.keys import Principal
from tally.ledger import open_ledger
from tally.store import open_store


def test_sign_in_sets_a_strict_http_only_secure_cookie(site: Site) -> None:
    page = site.client.get("/studio/sign-in")
    assert page.status_code == 200 and 'type="password"' in page.text and 'for="api_key"' in page.text
    token = site.csrf("/studio/sign-in")
    answer = site.client.post(
        "/studio/sign-in", data={"api_key": site.tokens["alice"], "csrf": token, "next": "/datanets"},
        follow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 303 and answer.headers["location"] == "/studio/datanets"
    cookie = answer.headers["set-cookie"]
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite=strict", "path=/studio"} <= flags
    assert site.tokens["alice"] not in cookie and site.tokens["alice"].split("_")[2] not in cookie  # never the key
    home = site.client.get("/studio/")
    assert "Signed in as <strong>alice</strong>" in home.text
    out = site.post("/studio/sign-out", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/studio/sign-in"
    assert "Signed in as" not in site.client.get("/studio/").text
    assert site.client.get("/studio/datanets", follow_redirects=False).status_code == 303


def test_a_bad_key_is_named_and_next_stays_on_the_site(site: Site) -> None:
    token = site.csrf("/studio/sign-in")
    bad = site.client.post("/studio/sign-in", data={"api_key": "tly_nope_nope", "csrf": token})
    assert bad.status_code == 401 and "api_key" in bad.text and "invalid API key" in bad.text
    empty = site.client.post("/studio/sign-in", data={"api_key": "", "csrf": token})
    assert empty.status_code == 400 and "enter your API key" in empty.text
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil"):
        answer = site.client.post(
            "/studio/sign-in", data={"api_key": site.tokens["carl"], "csrf": site.csrf("/studio/sign-in"),
                                     "next": target}, follow_redirects=False,
        )  # fmt: skip
        assert answer.headers["location"] == "/studio/", target
        site.client.cookies.clear()


def test_pages_send_a_visitor_to_sign_in_and_back(site: Site) -> None:
    answer = site.client.get("/studio/datanets/recipes?page=2", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/studio/sign-in?next=/datanets/recipes%3Fpage%3D2"


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(site: Site) -> None:
    site.as_("olga")
    data = {"name": "x-1", "kind": "instruction", "license": "MIT", "uses": ["train"]}
    missing = site.client.post("/studio/datanets/-/new", data=data)
    assert missing.status_code == 403 and "security token" in missing.text
    wrong = site.client.post("/studio/datanets/-/new", data={**data, "csrf": "A" * 43})
    assert wrong.status_code == 403
    header = site.client.post("/studio/datanets/-/new", data=data, headers={"X-CSRF-Token": "nope"})
    assert header.status_code == 403
    # a token from before sign-in is worthless after it (a new session, a new token)
    site.client.cookies.clear()
    before = site.csrf("/studio/sign-in")
    site.client.post("/studio/sign-in", data={"api_key": site.tokens["olga"], "csrf": before})
    assert site.client.post("/studio/datanets/-/new", data={**data, "csrf": before}).status_code == 403
    assert site.client.post("/studio/sign-out", data={}).status_code == 403  # sign-out is a POST with a token too
    ok = site.post("/studio/datanets/-/new", data, follow_redirects=False)
    assert ok.status_code == 303
    by_header = site.client.post(
        "/studio/datanets/-/new", data={**data, "name": "x-2"}, headers={"X-CSRF-Token": site.csrf()},
        follow_redirects=False,
    )  # fmt: skip
    assert by_header.status_code == 303


def test_a_forged_or_revoked_session_is_signed_out(site: Site, settings: Settings) -> None:
    site.as_("alice")
    cookie = site.client.cookies.get("tally_studio")
    assert cookie is not None
    parts = cookie.split(".")
    parts[2] = "0" * 12  # another key id, the old MAC
    site.client.cookies.clear()
    site.client.cookies.set("tally_studio", ".".join(parts))
    assert site.client.get("/studio/datanets", follow_redirects=False).status_code == 303
    site.as_("alice")
    key_id = site.tokens["alice"].split("_")[1]
    store = open_store(settings)
    with store.transaction() as s:
        revoke_api_key(s, open_ledger(settings, store), key_id, by=Principal(site.addresses["alice"], "alice",
                                                                              frozenset({"contributor"})))  # fmt: skip
    store.dispose()
    assert site.client.get("/studio/datanets", follow_redirects=False).status_code == 303


def test_error_pages_carry_the_message_and_status(site: Site) -> None:
    site.as_("alice")
    missing = site.client.get("/studio/datanets/no-such-thing")
    assert missing.status_code == 404 and "no datanet named" in missing.text and 'role="alert"' in missing.text
    forbidden = site.client.get("/studio/datanets/recipes/review")
    assert forbidden.status_code == 403 and "only the owner of" in forbidden.text
    invalid = site.client.get("/studio/datanets/recipes?page=0")
    assert invalid.status_code == 400 and "page" in invalid.text
    assert site.client.get("/studio/no-such-page").status_code == 404


def test_static_files_and_headers(site: Site) -> None:
    for path, kind in (
        ("/studio/static/studio.css", "text/css"),
        ("/studio/static/studio.js", "javascript"),
        ("/studio/vendor/htmx.org/dist/htmx.min.js", "javascript"),
        ("/studio/vendor/@picocss/pico/css/pico.min.css", "text/css"),
    ):
        answer = site.client.get(path)
        assert answer.status_code == 200 and kind in answer.headers["content-type"], path
    for path in ("/studio/vendor/solc/index.js", "/studio/static/../pages.py", "/studio/vendor/htmx.org/package.json",
                 "/studio/vendor/htmx.org/../solc/soljson.js"):  # fmt: skip
        assert site.client.get(path).status_code == 404, path
    page = site.client.get("/studio/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"


def test_layout_is_labelled_and_keyboard_ready(site: Site) -> None:
    page = site.as_("alice").client.get("/studio/datanets").text
    assert '<a class="skip-link" href="#main">' in page and '<main id="main"' in page
    assert '<nav aria-label="Studio sections">' in page and 'aria-current="page">Datanets' in page
    for label in ("Datanets", "Factory", "Models", "Playground", "Ledger", "Rewards"):
        assert f">{label}</a>" in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count("<h1>") == 1


def test_every_studio_page_declares_a_rule(site: Site) -> None:
    studio = next(r for r in site.client.app.routes if getattr(r, "path", None) == "/studio")  # type: ignore[attr-defined]
    pages = [r for r in policy.routes_of(studio.app) if isinstance(r.original_route, APIRoute)]
    assert len(pages) > 20
    missing = [r.path for r in pages if policy.rule_of(r) is None]
    assert not missing, missing


@pytest.fixture
def proxied(settings: Settings) -> Iterator[Site]:
    behind = settings.model_copy(update={"server": settings.server.model_copy(update={"root_path": "/tally"})})
    yield from make_site(behind)


def test_root_path_prefixes_links_and_the_cookie(proxied: Site) -> None:
    page = proxied.client.get("/studio/sign-in")
    assert page.status_code == 200
    assert 'href="/tally/studio/static/studio.css"' in page.text and 'action="/tally/studio/sign-in"' in page.text
    assert "Path=/tally/studio" in page.headers["set-cookie"]
    proxied.client.cookies.clear()
    # a proxy that keeps the prefix in the path reaches the same page
    with TestClient(proxied.client.app, base_url=BASE, root_path="/tally") as client:
        assert client.get("/tally/studio/sign-in").status_code == 200


def test_the_studio_can_be_turned_off(settings: Settings) -> None:
    off = settings.model_copy(update={"studio": settings.studio.model_copy(update={"enabled": False})})
    with TestClient(create_app(off), base_url=BASE) as client:
        assert client.get("/studio/").status_code == 404
        assert client.get("/health").status_code == 200


def test_each_page_renders_for_the_right_role_and_not_for_the_wrong_one(site: Site) -> None:
    """Every page of the datanets, ledger and rewards sections: 200 for whom it is meant, with one h1 inside the
    main landmark; the owner's pages refused to a contributor; key pages send a visitor to sign in."""
    olga = site.addresses["olga"]
    site.as_("olga")
    site.post("/studio/datanets/recipes/snapshots")
    pages = {
        "olga": [
            "/studio/", "/studio/datanets", "/studio/datanets/-/new", "/studio/datanets/recipes",
            "/studio/datanets/recipes/contribute", "/studio/datanets/recipes/review",
            "/studio/datanets/recipes/snapshots", "/studio/datanets/recipes/diff?from=v1&to=v1",
            "/studio/datanets/recipes/access", "/studio/datanets/recipes/contributors", "/studio/ledger",
            "/studio/ledger/entries/0", "/studio/ledger/anchors", "/studio/rewards", "/studio/rewards/epochs",
        ],
        None: ["/studio/", "/studio/sign-in", "/studio/ledger", "/studio/ledger/entries/0", "/studio/ledger/anchors",
               f"/studio/rewards?address={olga}", "/studio/rewards/epochs"],
    }  # fmt: skip
    for who, paths in pages.items():
        site.as_(who)
        for path in paths:
            page = site.client.get(path)
            assert page.status_code == 200, (who, path, page.status_code)
            main = page.text.split('<main id="main"', 1)[1].split("</main>", 1)[0]
            assert main.count("<h1>") == 1 and page.text.count("<h1>") == 1, (who, path)
    site.as_("alice")
    for path in ("/studio/datanets/recipes/review", "/studio/datanets/-/new"):
        assert site.client.get(path).status_code == 403, path
    assert site.post("/studio/datanets/recipes/snapshots").status_code == 403
    site.as_(None)
    for path in ("/studio/datanets", "/studio/datanets/recipes", "/studio/datanets/recipes/contribute"):
        assert site.client.get(path, follow_redirects=False).status_code == 303, path
