"""Datanets pages: list and search, a datanet's page, create, contribute (with every bad line shown, repeated rows
dropped on request, and signing in the browser's wallet), the owner's review queue, snapshots and their diff, access
requests and grants, and the contributor leaderboard. Every page calls `tally.datanets`' service functions, the ones
the API and the CLI call."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from tally.config.errors import TallyError
from tally.datanets import access, contribute, review, service, snapshots
from tally.datanets.errors import NotFoundError
from tally.identity import AccountError, load_local_key
from tally.studio.pages import View, page, redirect, render, status_of

router = APIRouter()

NAV = "datanets"
MAX_TEXT = 10_000  # a description, purpose or reason typed into a form
MAX_LINE_SHOWN = 400  # characters of a bad line shown beside its problem


def _page_args(request: Request, **changes: object) -> str:
    """The current query string with some parameters changed (None removes one)."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = str(value)
    return urlencode(params)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# -- list, search, create -------------------------------------------------------------------------------------------


@router.get("/datanets")
def datanets(
    request: Request,
    q: str = Query("", max_length=service.MAX_QUERY_CHARS),
    after: str | None = Query(None, max_length=64),
    view: View = Depends(page("key")),
) -> Response:
    assert view.who is not None
    size = view.page_size
    with view.runtime.store.read() as s:
        found = service.search_datanets(s, view.who, q, after=after, limit=size + 1)
    items, more = found[:size], len(found) > size
    next_args = _page_args(request, after=items[-1].slug) if more else None
    first_args = _page_args(request, after=None) if after else None
    return render(request, view, "datanets/list.html", nav=NAV, items=items, q=q, next_args=next_args,
                  first_args=first_args)  # fmt: skip


def _create_form(request: Request, view: View, status: int = 200, **context: Any) -> Response:
    values = context.pop("values", {})
    return render(
        request, view, "datanets/new.html", status, nav=NAV, kinds=service.KINDS, uses=service.USES,
        visibilities=service.VISIBILITIES, policies=service.POLICIES, values=values,
        defaults=view.runtime.settings.datanets, **context,
    )  # fmt: skip


@router.get("/datanets/-/new")
def new_datanet(request: Request, view: View = Depends(page("role", "owner"))) -> Response:
    return _create_form(request, view, values={"uses": ["train"], "visibility": "public", "policy": "owner-reviewed"})


@router.post("/datanets/-/new")
def create_datanet(
    request: Request,
    name: str = Form(..., max_length=64),
    kind: str = Form(..., max_length=16),
    license: str = Form(..., max_length=256),
    uses: list[str] = Form([]),
    description: str = Form("", max_length=MAX_TEXT),
    tags: str = Form("", max_length=1000),
    visibility: str = Form("public", max_length=16),
    policy: str = Form("owner-reviewed", max_length=16),
    view: View = Depends(page("role", "owner")),
) -> Response:
    assert view.who is not None
    limits = view.runtime.settings.datanets
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    values = {"name": name, "kind": kind, "license": license, "uses": uses, "description": description,
              "tags": tags, "visibility": visibility, "policy": policy}  # fmt: skip
    try:
        with view.runtime.store.transaction() as s:
            dn = service.create_datanet(
                s, view.runtime.ledger, view.who, name.strip(), kind=kind, license=license, uses=uses,
                description=description, tags=tag_list, visibility=visibility, policy=policy,
                max_upload_bytes=limits.max_upload_bytes, max_rows_per_day=limits.max_rows_per_day,
            )  # fmt: skip
    except TallyError as exc:
        return _create_form(request, view, status_of(exc), values=values, error=exc.message, param=exc.param)
    return redirect(request, f"/datanets/{dn.slug}?" + urlencode({"done": f"datanet {dn.slug} created"}))


# -- one datanet ------------------------------------------------------------------------------------------------------


@router.get("/datanets/{slug}")
def datanet(
    request: Request,
    slug: str,
    status: str | None = Query(None, pattern="^(pending|accepted|rejected)$"),
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    view: View = Depends(page("key")),
) -> Response:
    assert view.who is not None
    size = view.page_size
    with view.runtime.store.read() as s:
        dn = service.get_datanet(s, view.who, slug)
        snaps = snapshots.list_snapshots(s, view.who, slug)
        rows = service.list_rows(s, view.who, slug, status=status, limit=size + 1, offset=(page_number - 1) * size)
        top = service.contributor_leaderboard(s, view.who, slug, limit=5)
        manager = service.is_manager(view.who, dn)
    more = len(rows) > size
    return render(
        request, view, "datanets/show.html", nav=NAV, dn=dn, snapshots=snaps[-5:][::-1], snapshot_count=len(snaps),
        rows=rows[:size], row_status=status, page_number=page_number, manager=manager, top=top,
        next_args=_page_args(request, page=page_number + 1) if more else None,
        prev_args=_page_args(request, page=page_number - 1) if page_number > 1 else None,
    )  # fmt: skip


@router.get("/datanets/{slug}/contributors")
def contributors(
    request: Request,
    slug: str,
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    view: View = Depends(page("key")),
) -> Response:
    assert view.who is not None
    size = view.page_size
    with view.runtime.store.read() as s:
        dn = service.get_datanet(s, view.who, slug)
        board = service.contributor_leaderboard(s, view.who, slug, limit=size + 1, offset=(page_number - 1) * size)
    more = len(board) > size
    return render(
        request, view, "datanets/contributors.html", nav=NAV, dn=dn, board=board[:size],
        first_rank=(page_number - 1) * size + 1,
        next_args=_page_args(request, page=page_number + 1) if more else None,
        prev_args=_page_args(request, page=page_number - 1) if page_number > 1 else None,
    )  # fmt: skip


# -- contribute ------------------------------------------------------------------------------------------------------


def _local_key_exists(view: View) -> bool:
    assert view.who is not None
    try:
        load_local_key(view.runtime.settings.account_keys_dir, view.who.address)
    except AccountError:
        return False
    return True


def _contribute_page(request: Request, view: View, slug: str, status: int = 200, **context: Any) -> Response:
    assert view.who is not None
    with view.runtime.store.read() as s:
        dn = service.get_datanet(s, view.who, slug)
    template = "datanets/_upload_result.html" if _is_htmx(request) else "datanets/contribute.html"
    return render(
        request, view, template, status, nav=NAV, dn=dn, chain_id=view.runtime.settings.chain_id,
        server_key=_local_key_exists(view), **context,
    )  # fmt: skip


@router.get("/datanets/{slug}/contribute")
def contribute_form(
    request: Request, slug: str, view: View = Depends(page("role", "contributor", "owner"))
) -> Response:
    return _contribute_page(request, view, slug)


def _lines_of(data: bytes, problems: list[dict[str, Any]]) -> dict[int, str]:
    """The text of each line a problem names, cut to MAX_LINE_SHOWN characters, to show beside it."""
    wanted = {int(p["line"]) for p in problems if isinstance(p.get("line"), int)}
    if not wanted:
        return {}
    text = data.decode("utf-8", errors="replace")
    shown = {}
    for number, line in enumerate(text.split("\n"), 1):
        if number in wanted:
            shown[number] = line if len(line) <= MAX_LINE_SHOWN else line[:MAX_LINE_SHOWN] + "…"
        if number >= max(wanted):
            break
    return shown


def _read_upload(file: UploadFile, view: View, slug: str) -> bytes:
    """The file's bytes, read up to one byte past the datanet's cap (the parser names the cap)."""
    assert view.who is not None
    with view.runtime.store.read() as s:
        cap = service.get_datanet(s, view.who, slug).max_upload_bytes
    return file.file.read(cap + 1)


@router.post("/datanets/{slug}/contribute")
def contribute_upload(
    request: Request,
    slug: str,
    file: UploadFile = File(...),
    format: str = Form("", max_length=16),
    drop_duplicates: bool = Form(False),
    sign_on_server: bool = Form(False),
    signature: str = Form("", max_length=200),
    nonce: str = Form("", max_length=80),
    view: View = Depends(page("role", "contributor", "owner")),
) -> Response:
    """Upload a file. A refused file shows every bad line with its reason beside it; when every fault is a repeated
    row, the same form offers to drop them."""
    assert view.who is not None
    runtime = view.runtime
    data = _read_upload(file, view, slug)
    filename = file.filename or "upload"
    fmt = format or None
    options = {"format": format, "drop_duplicates": drop_duplicates, "sign_on_server": sign_on_server}
    try:
        nonce_value = int(nonce) if nonce.strip() else None
    except ValueError:
        return _contribute_page(request, view, slug, 400, options=options, error="nonce: a whole number",
                                param="nonce")  # fmt: skip
    sig = signature.strip() or None
    try:
        with runtime.store.transaction() as s:
            if sign_on_server and sig is None:
                prepared = contribute.prepare_signing(
                    s, view.who, slug, data, filename, settings=runtime.settings.datanets,
                    chain_id=runtime.settings.chain_id, format=fmt, drop_duplicates=drop_duplicates,
                )  # fmt: skip
                sig, nonce_value = (
                    prepared.sign(load_local_key(runtime.settings.account_keys_dir, view.who.address)),
                    prepared.nonce,
                )
            result = contribute.contribute(
                s, runtime.ledger, view.who, slug, data, filename, settings=runtime.settings.datanets,
                chain_id=runtime.settings.chain_id, format=fmt, signature=sig, nonce=nonce_value,
                near_dups=runtime.near_dups, drop_duplicates=drop_duplicates,
            )  # fmt: skip
    except TallyError as exc:
        problems = exc.values.get("problems")
        listed: list[dict[str, Any]] = problems if isinstance(problems, list) else []
        if not listed and exc.values.get("line") is not None:  # a single error raised before rows were read
            listed = [{"line": exc.values.get("line"), "problem": exc.values.get("problem", exc.message),
                       "field": exc.values.get("field"), "expected": exc.values.get("expected")}]  # fmt: skip
        only_repeats = bool(listed) and all(p.get("duplicate_of_line") or p.get("contribution") for p in listed)
        return _contribute_page(
            request, view, slug, status_of(exc), options=options, error=exc.message, param=exc.param,
            problems=listed, lines=_lines_of(data, listed), more_problems=bool(exc.values.get("more_problems")),
            only_repeats=only_repeats and not drop_duplicates, filename=filename,
        )  # fmt: skip
    return _contribute_page(request, view, slug, 201, options=options, result=result, filename=filename)


@router.post("/datanets/{slug}/contribute/prepare")
def prepare_signature(
    request: Request,
    slug: str,
    file: UploadFile = File(...),
    format: str = Form("", max_length=16),
    drop_duplicates: bool = Form(False),
    view: View = Depends(page("role", "contributor", "owner")),
) -> Response:
    """JSON for the browser's wallet: the EIP-712 typed data over the upload's rows (tally.identity.signing's domain
    and types), with a fresh nonce (as a decimal string: JavaScript numbers cannot hold a uint256)."""
    assert view.who is not None
    data = _read_upload(file, view, slug)
    try:
        with view.runtime.store.read() as s:
            prepared = contribute.prepare_signing(
                s, view.who, slug, data, file.filename or "upload", settings=view.runtime.settings.datanets,
                chain_id=view.runtime.settings.chain_id, format=format or None, drop_duplicates=drop_duplicates,
            )  # fmt: skip
    except TallyError as exc:
        return JSONResponse({"error": exc.message, "param": exc.param}, status_code=status_of(exc))
    typed = json.loads(json.dumps(prepared.typed_data))
    typed["message"]["nonce"] = str(prepared.nonce)
    return JSONResponse(
        {
            "typed_data": typed,
            "nonce": str(prepared.nonce),
            "content_root": prepared.content_root,
            "rows": prepared.rows,
            "dropped": prepared.dropped,
            "address": view.who.address,
        }
    )


# -- review -----------------------------------------------------------------------------------------------------------


@router.get("/datanets/{slug}/review")
def review_queue(
    request: Request,
    slug: str,
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    view: View = Depends(page("datanet_owner")),
) -> Response:
    return _review_page(request, view, slug, page_number)


def _review_page(
    request: Request, view: View, slug: str, page_number: int, status: int = 200, **context: Any
) -> Response:
    assert view.who is not None
    size = view.page_size
    with view.runtime.store.read() as s:
        dn = service.get_datanet(s, view.who, slug)
        rows = service.list_rows(s, view.who, slug, status="pending", limit=size + 1, offset=(page_number - 1) * size)
        similar = service.rows_by_hash(s, view.who, slug, [str(r["near_dup_of"]) for r in rows if r["near_dup_of"]])
    more = len(rows) > size
    return render(
        request, view, "datanets/review.html", status, nav=NAV, dn=dn, rows=rows[:size], similar=similar,
        page_number=page_number,
        next_args=_page_args(request, page=page_number + 1) if more else None,
        prev_args=_page_args(request, page=page_number - 1) if page_number > 1 else None, **context,
    )  # fmt: skip


@router.post("/datanets/{slug}/review")
def review_decide(
    request: Request,
    slug: str,
    decision: str = Form(..., max_length=16),
    reason: str = Form("", max_length=MAX_TEXT),
    rows: list[str] = Form([]),
    contribution: str = Form("", max_length=64),
    view: View = Depends(page("datanet_owner")),
) -> Response:
    """Accept or reject the ticked rows (or a whole contribution), with a reason for a rejection."""
    assert view.who is not None
    chosen = [r for r in rows if r][:1000]
    try:
        with view.runtime.store.transaction() as s:
            changed = review.review(
                s, view.runtime.ledger, view.who, slug, decision=decision, reason=reason,
                contribution=contribution.strip() or None, rows=chosen or None,
            )  # fmt: skip
    except TallyError as exc:
        return _review_page(request, view, slug, 1, status_of(exc), error=exc.message, param=exc.param,
                            reason=reason)  # fmt: skip
    word = "accepted" if decision == "accept" else "rejected"
    return redirect(request, f"/datanets/{slug}/review?" + urlencode({"done": f"{changed} row(s) {word}"}))


# -- snapshots --------------------------------------------------------------------------------------------------------


@router.get("/datanets/{slug}/snapshots")
def snapshot_list(request: Request, slug: str, view: View = Depends(page("key"))) -> Response:
    assert view.who is not None
    with view.runtime.store.read() as s:
        dn = service.get_datanet(s, view.who, slug)
        snaps = snapshots.list_snapshots(s, view.who, slug)
        manager = service.is_manager(view.who, dn)
    return render(request, view, "datanets/snapshots.html", nav=NAV, dn=dn, snapshots=snaps[::-1], manager=manager)


@router.post("/datanets/{slug}/snapshots")
def snapshot_create(request: Request, slug: str, view: View = Depends(page("datanet_owner"))) -> Response:
    assert view.who is not None
    with view.runtime.store.transaction() as s:
        snap = snapshots.create_snapshot(s, view.runtime.ledger, view.who, slug)
    return redirect(
        request, f"/datanets/{slug}/snapshots?" + urlencode({"done": f"snapshot v{snap.version} is the latest"})
    )


@router.get("/datanets/{slug}/diff")
def snapshot_diff(
    request: Request,
    slug: str,
    from_: str = Query(..., alias="from", max_length=70),
    to: str = Query("latest", max_length=70),
    side: str = Query("added", pattern="^(added|removed)$"),
    after: str | None = Query(None, max_length=64),
    view: View = Depends(page("key")),
) -> Response:
    assert view.who is not None
    with view.runtime.store.read() as s:
        dn = service.get_datanet(s, view.who, slug)
        diff = snapshots.diff_page(s, view.who, slug, from_, to, side=side, after=after, limit=view.page_size + 1)
    rows = diff["rows"]
    more = len(rows) > view.page_size
    rows = rows[: view.page_size]
    return render(
        request, view, "datanets/diff.html", nav=NAV, dn=dn, diff=diff, rows=rows, side=side,
        next_args=_page_args(request, after=rows[-1]["row_hash"]) if more else None,
        first_args=_page_args(request, after=None) if after else None,
        other_side_args=_page_args(request, side="removed" if side == "added" else "added", after=None),
    )  # fmt: skip


# -- access requests --------------------------------------------------------------------------------------------------


def _access_page(request: Request, view: View, slug: str, status: int = 200, **context: Any) -> Response:
    """A reader sees the datanet's requests (all of them, for its owner); someone who may not read it (a private
    datanet, or no datanet of that name: the page does not tell which) sees a request form and their own requests."""
    assert view.who is not None
    with view.runtime.store.read() as s:
        try:
            dn: service.Datanet | None = service.get_datanet(s, view.who, slug)
        except NotFoundError:
            dn = None
        try:
            requests = access.list_access_requests(s, view.who, slug)
        except NotFoundError:
            requests = []
        manager = dn is not None and service.is_manager(view.who, dn)
    return render(
        request, view, "datanets/access.html", status, nav=NAV, dn=dn, slug=slug, requests=requests[::-1],
        manager=manager, uses=dn.uses if dn is not None else service.USES, **context,
    )  # fmt: skip


@router.get("/datanets/{slug}/access")
def access_requests(request: Request, slug: str, view: View = Depends(page("key"))) -> Response:
    return _access_page(request, view, slug)


@router.post("/datanets/{slug}/access")
def access_request(
    request: Request,
    slug: str,
    uses: list[str] = Form([]),
    purpose: str = Form("", max_length=MAX_TEXT),
    view: View = Depends(page("key")),
) -> Response:
    assert view.who is not None
    try:
        with view.runtime.store.transaction() as s:
            made = access.request_access(s, view.runtime.ledger, view.who, slug, uses=uses, purpose=purpose)
    except TallyError as exc:
        return _access_page(request, view, slug, status_of(exc), error=exc.message, param=exc.param,
                            purpose=purpose, chosen=uses)  # fmt: skip
    return redirect(request, f"/datanets/{slug}/access?" + urlencode({"done": f"request #{made.id} sent"}))


@router.post("/datanets/{slug}/access/{request_id}")
def access_decide(
    request: Request,
    slug: str,
    request_id: int,
    decision: str = Form(..., pattern="^(grant|deny)$"),
    reason: str = Form("", max_length=MAX_TEXT),
    view: View = Depends(page("datanet_owner")),
) -> Response:
    assert view.who is not None
    try:
        with view.runtime.store.transaction() as s:
            decided = access.decide_access(
                s, view.runtime.ledger, view.who, slug, request_id, grant=decision == "grant", reason=reason
            )
    except TallyError as exc:
        return _access_page(request, view, slug, status_of(exc), error=exc.message, param=exc.param,
                            decided_id=request_id)  # fmt: skip
    return redirect(
        request, f"/datanets/{slug}/access?" + urlencode({"done": f"request #{decided.id} {decided.status}"})
    )
