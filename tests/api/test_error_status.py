"""One mapping of error kinds to HTTP: a package's error becomes its kind's status and OpenAI error type."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tally.api.errors import ApiError, install
from tally.attribution.service import AttributionError
from tally.config.errors import TallyError
from tally.datanets.errors import DatanetError, ForbiddenError, NotFoundError
from tally.datanets.upload_errors import UploadError
from tally.engine.errors import AdapterNotFoundError, EngineClosedError, RequestValidationError
from tally.factory.errors import DataRefusedError
from tally.identity import AccountError, AuthError, SignatureError
from tally.ledger import LedgerError, LedgerLimitError, ProofError, VerificationError
from tally.models.errors import ModelNotPulledError, UnknownModelError
from tally.rag.service import IndexMissingError
from tally.rewards.errors import DuplicateAccrualError, PolicyError, RewardsNotFoundError

CASES: list[tuple[TallyError, int, str]] = [
    (AccountError("bad name", param="name"), 400, "invalid_request_error"),
    (AuthError("invalid API key"), 401, "authentication_error"),
    (ForbiddenError("needs the owner role"), 403, "permission_error"),
    (DataRefusedError({"d": "license forbids training"}), 403, "permission_error"),
    (NotFoundError("no datanet named 'x'"), 404, "not_found_error"),
    (IndexMissingError("no RAG index"), 404, "not_found_error"),
    (AdapterNotFoundError("no model"), 404, "not_found_error"),
    (UnknownModelError("unknown model"), 404, "not_found_error"),
    (RewardsNotFoundError("no epoch 2"), 404, "not_found_error"),
    (AttributionError("no attribution record", kind="not_found"), 404, "not_found_error"),
    (SignatureError("nonce already used", kind="conflict"), 409, "invalid_request_error"),
    (DuplicateAccrualError("already accrued"), 409, "invalid_request_error"),
    (DatanetError("too many rows today", kind="limit", window="day"), 429, "rate_limit_error"),
    (UploadError("d.jsonl", "3 MB is too big", "at most 1 MB", kind="limit", limit=1), 413, "invalid_request_error"),
    (LedgerLimitError("batch too large", limit=5, size=6), 413, "invalid_request_error"),
    (EngineClosedError("the engine is stopped"), 503, "server_error"),
    (ModelNotPulledError("not pulled"), 503, "server_error"),
    (PolicyError("fees.yaml line 1: bad"), 500, "server_error"),
    (LedgerError("stored tree is missing a hash"), 500, "server_error"),
    (VerificationError(3, "leaf differs", reason="leaf_mismatch"), 500, "server_error"),
    (RequestValidationError("temperature must be between 0 and 2", param="temperature"), 400, "invalid_request_error"),
    (ProofError("index 5 is outside a tree of size 5", reason="index_out_of_range", index=5, size=5), 400,
     "invalid_request_error"),
]  # fmt: skip


def _client(exc: Exception) -> TestClient:
    app = FastAPI()
    install(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(("exc", "status", "type_"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_kind_maps_to_one_status_and_openai_type(exc: TallyError, status: int, type_: str) -> None:
    r = _client(exc).get("/boom")
    assert r.status_code == status
    assert r.json() == {
        "error": {"message": exc.message, "type": type_, "param": exc.param, "code": getattr(exc, "reason", None)}
    }


def test_param_and_reason_reach_the_body() -> None:
    body = _client(RequestValidationError("top_p must be in (0, 1]", param="top_p")).get("/boom").json()["error"]
    assert body["param"] == "top_p" and body["code"] is None
    proof = ProofError("inclusion proof has 2 hashes, expected 3", reason="wrong_proof_size", got=2, expected=3)
    assert _client(proof).get("/boom").json()["error"]["code"] == "wrong_proof_size"


def test_http_only_errors_keep_their_own_status() -> None:
    r = _client(ApiError(401, "missing API key", type_="authentication_error")).get("/boom")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
