"""Datanets pages: list and search, a datanet's page, create, contribute, review, snapshots, access, leaderboard."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tally.studio.pages import View, page, render

router = APIRouter()


@router.get("/datanets")
def datanets(request: Request, view: View = Depends(page("key"))) -> Response:
    return render(request, view, "datanets/list.html", nav="datanets", items=[])
