"""Rewards pages: a contributor's balance and statement, epochs and payout proofs, claims."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tally.studio.pages import View, page, render

router = APIRouter()


@router.get("/rewards")
def rewards(request: Request, view: View = Depends(page("key"))) -> Response:
    return render(request, view, "rewards/index.html", nav="rewards")
