"""One mapping of error kinds to CLI exit codes: the message on stderr, no traceback, the kind's exit code."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from tally.cli.common import EXIT_CODES, cli_errors
from tally.config.errors import ERROR_KINDS, TallyError
from tally.datanets.errors import DatanetError, ForbiddenError, NotFoundError
from tally.engine.errors import AdapterNotFoundError, EngineClosedError
from tally.factory.errors import DataRefusedError
from tally.identity import AccountError, AuthError
from tally.ledger import LedgerLimitError, ProofError, VerificationError
from tally.models.errors import ModelPullError
from tally.rewards.errors import NothingToPayError, PolicyError

CASES: list[tuple[TallyError, int]] = [
    (AccountError("bad name"), 1),
    (ProofError("index 5 is outside a tree of size 5", reason="index_out_of_range"), 1),
    (AuthError("API key expired"), 3),
    (ForbiddenError("needs the owner role"), 3),
    (DataRefusedError({"d": "no training use"}), 3),
    (NotFoundError("no datanet named 'x'"), 4),
    (AdapterNotFoundError("adapter 'x' is not registered"), 4),
    (NothingToPayError("nothing to pay"), 5),
    (DatanetError("a datanet named 'x' already exists", kind="conflict"), 5),
    (LedgerLimitError("batch of 6 entries exceeds ledger.max_batch=5"), 6),
    (ModelPullError("Downloading failed"), 7),
    (EngineClosedError("the engine is stopped"), 7),
    (PolicyError("fees.yaml line 1: bad"), 70),
    (VerificationError(3, "entries [3, 4) differ", reason="leaf_mismatch"), 70),
]


@pytest.mark.parametrize(("exc", "code"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_kind_exits_with_its_code(exc: TallyError, code: int) -> None:
    app = typer.Typer()

    @app.command()
    def boom() -> None:
        with cli_errors():
            raise exc

    result = CliRunner().invoke(app, [])
    assert result.exit_code == code
    assert result.output.strip() == f"error: {exc.message}"  # markup in messages is printed as text
    assert "Traceback" not in result.output


def test_every_kind_has_a_code_and_none_is_typers_usage_code() -> None:
    assert set(EXIT_CODES) == set(ERROR_KINDS)
    assert 2 not in EXIT_CODES.values() and EXIT_CODES["invalid"] == 1
