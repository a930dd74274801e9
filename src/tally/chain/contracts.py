"""The compiled contracts: ABI and bytecode committed under `artifacts/` (built by `contracts/compile.mjs`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

LEDGER_ANCHOR = "LedgerAnchor"
REWARD_TOKEN = "RewardToken"
REWARD_DISTRIBUTOR = "RewardDistributor"
CONTRIBUTION_VERIFIER = "ContributionVerifier"
CONTRACT_NAMES = (LEDGER_ANCHOR, REWARD_TOKEN, REWARD_DISTRIBUTOR, CONTRIBUTION_VERIFIER)


def load_artifact(name: str) -> dict[str, Any]:
    """The artifact of contract `name`: contractName, abi, bytecode, deployedBytecode, compiler, settings,
    sourceHashes."""
    if name not in CONTRACT_NAMES:
        raise ValueError(f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    artifact: dict[str, Any] = json.loads((ARTIFACTS / f"{name}.json").read_text(encoding="utf-8"))
    return artifact
