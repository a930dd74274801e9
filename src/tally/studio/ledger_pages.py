"""Ledger pages: entries by type, the latest checkpoint, inclusion proofs checked in the browser, chain anchors."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tally.studio.pages import View, page, render

router = APIRouter()


@router.get("/ledger")
def ledger(request: Request, view: View = Depends(page("anonymous"))) -> Response:
    return render(request, view, "ledger/index.html", nav="ledger")
