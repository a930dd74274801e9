"""Models pages: the base model and every served adapter with its manifest (data snapshots, developer,
evaluations), the cache tier that holds it, its metrics, and load / unload for admins.

Load and unload call the engine as `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` do
(`Engine.add_adapter`, `Engine.remove_adapter`); the served names come from the registry the factory and
`tally adapters` write (`tally.engine.registry`), the provenance from the adapter's manifest and the factory's
tables, evaluations from `factory.evaluation.adapter_evaluations`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tally.answers import engine_of
from tally.config.errors import TallyError
from tally.studio.pages import View, page, redirect, render

router = APIRouter()

TIER_LABEL = {
    "slot": "active slot",
    "host": "host memory",
    "disk": "disk",
    "unloaded": "unloaded",
}


def _engine(view: View) -> Any:
    try:
        return engine_of(view.runtime)
    except TallyError:
        return None


def _served(view: View) -> dict[str, dict[str, Any]]:
    """Every adapter name the server serves or may serve: the registry file, plus names loaded by an admin."""
    from tally.engine import adapter_registry_path
    from tally.engine.registry import read_registry

    engine = _engine(view)
    out: dict[str, dict[str, Any]] = {}
    for entry in read_registry(adapter_registry_path(view.runtime.settings)).values():
        out[entry.name] = {"name": entry.name, "path": entry.path, "adapter_id": entry.adapter_id,
                           "pinned": entry.pinned, "registered": True}  # fmt: skip
    if engine is not None:
        for e in engine.adapters():
            out[e.name] = {**out.get(e.name, {"registered": False}), "name": e.name, "path": str(e.path),
                           "adapter_id": e.adapter_id, "pinned": e.pinned}  # fmt: skip
        for name, info in out.items():
            loaded = any(e.name == name for e in engine.adapters())
            info["tier"] = (
                engine.adapter_tier(name) if loaded else ("unloaded" if engine.was_unloaded(name) else "disk")
            )
    return out


def _manifest(path: str) -> Any:
    from tally.engine.manifest import read_adapter_manifest

    try:
        return read_adapter_manifest(Path(path))
    except TallyError:
        return None


def _names(view: View) -> dict[str, str]:
    """Account names by address, to show people rather than hex."""
    from tally.identity import list_accounts

    with view.runtime.store.read() as s:
        return {a.address: a.name for a in list_accounts(s)}


@router.get("/models")
def models(request: Request, view: View = Depends(page("key"))) -> Response:
    engine = _engine(view)
    names = _names(view)
    adapters = []
    for info in sorted(_served(view).values(), key=lambda i: i["name"]):
        manifest = _manifest(info["path"])
        adapters.append({
            **info, "developer": names.get(manifest.trained_by, manifest.trained_by) if manifest else None,
            "datanets": [u.datanet for u in manifest.data.snapshots] if manifest else [],
            "train_loss": manifest.metrics.train_loss if manifest else None,
        })  # fmt: skip
    base = {
        "name": engine.model_name if engine else view.runtime.settings.models.default,
        "running": engine is not None,
    }
    return render(request, view, "models/index.html", nav="models", base=base, adapters=adapters,
                  tier_label=TIER_LABEL)  # fmt: skip


def _gauges(view: View, name: str) -> dict[str, float]:
    engine = _engine(view)
    if engine is None:
        return {}
    registry = engine.metrics.registry
    return {
        label: float(registry.get_sample_value(f"tally_engine_requests_{label}", {"adapter": name}) or 0.0)
        for label in ("running", "waiting")
    }


@router.get("/models/{name}")
def model_page(request: Request, name: str, view: View = Depends(page("key"))) -> Response:
    from tally.factory.evaluation import adapter_evaluations

    info = _served(view).get(name)
    if info is None:
        raise TallyError(f"no adapter is served as {name!r}", kind="not_found", param="name")
    manifest = _manifest(info["path"])
    adapter_id = manifest.adapter.hash if manifest else info.get("adapter_id")
    with view.runtime.store.read() as s:
        evaluations = [e.model_dump() for e in adapter_evaluations(s, adapter_id)] if adapter_id else []
    names = _names(view)
    return render(
        request, view, "models/adapter.html", nav="models", info=info, manifest=manifest, names=names,
        evaluations=evaluations, gauges=_gauges(view, name),
        tier_label=TIER_LABEL, is_admin=bool(view.who and view.who.has("admin")),
    )  # fmt: skip


@router.post("/models/{name}/load")
async def load(request: Request, name: str, view: View = Depends(page("admin"))) -> Response:
    """Load the registered adapter into the engine (read and checked now), as `POST /v1/load_lora_adapter` does."""
    info = _served(view).get(name)
    if info is None:
        raise TallyError(f"no adapter is registered as {name!r}", kind="not_found", param="name")
    engine = engine_of(view.runtime)
    await asyncio.to_thread(engine.add_adapter, name, info["path"], pinned=bool(info.get("pinned")))
    return redirect(request, f"/models/{name}")


@router.post("/models/{name}/unload")
def unload(request: Request, name: str, view: View = Depends(page("admin"))) -> Response:
    """Unload the adapter (its memory freed; not served until loaded again), as `/v1/unload_lora_adapter` does."""
    engine_of(view.runtime).remove_adapter(name)
    return redirect(request, f"/models/{name}")
