"""Which data a run may use: refusals name each datanet and why; masking keeps only answers as targets."""

from __future__ import annotations

import pytest
from tests.datanets.conftest import World
from tests.factory.conftest import people_rows

from tally.datanets import snapshots
from tally.factory.config import SourceCfg
from tally.factory.data import license_problem, load_examples, split
from tally.factory.encode import IGNORE, encode
from tally.factory.errors import DataRefusedError


def _snap(world: World, slug: str) -> None:
    with world.tx() as s:
        snapshots.create_snapshot(s, world.ledger, world.owner, slug)


def test_refusal_names_each_datanet_and_why(people: World) -> None:
    people.create("no-train", policy="open", uses=["rag"])
    people.create("nd-data", policy="open", license="CC-BY-ND-4.0", uses=["train"])
    people.create("secret", policy="open", visibility="private")
    for slug in ("no-train", "nd-data", "secret"):
        people.upload(people.owner, slug, people_rows())
        _snap(people, slug)
    sources = [SourceCfg(datanet=d) for d in ("people", "no-train", "nd-data", "secret", "missing")]
    with people.ledger.store.read() as s, pytest.raises(DataRefusedError) as err:
        load_examples(s, people.dev, sources)
    reasons = err.value.reasons
    assert set(reasons) == {"no-train", "nd-data", "secret", "missing"}
    assert "does not permit use 'train'" in reasons["no-train"]
    assert "forbids derivative works" in reasons["nd-data"]
    assert "no datanet named 'secret'" in reasons["secret"]  # unreadable private datanets are not disclosed
    assert "people" not in reasons


def test_private_datanet_needs_a_grant_and_commercial_needs_the_use(people: World) -> None:
    people.create("nc-data", policy="open", license="CC-BY-NC-4.0", uses=["train", "commercial"])
    people.upload(people.owner, "nc-data", people_rows())
    _snap(people, "nc-data")
    with people.ledger.store.read() as s:
        assert load_examples(s, people.dev, [SourceCfg(datanet="nc-data")]).examples
        with pytest.raises(DataRefusedError, match="non-commercial"):
            load_examples(s, people.dev, [SourceCfg(datanet="nc-data")], commercial=True)
        with pytest.raises(DataRefusedError, match="does not permit use 'commercial'"):
            load_examples(s, people.dev, [SourceCfg(datanet="people")], commercial=True)


def test_license_rules() -> None:
    assert license_problem("CC-BY-4.0", commercial=True) is None
    assert license_problem("CC-BY-ND-4.0 OR MIT", commercial=True) is None  # the MIT alternative may be chosen
    assert license_problem("CC-BY-NC-4.0", commercial=False) is None
    assert license_problem("CC-BY-NC-ND-4.0", commercial=False) == (
        "license CC-BY-NC-ND-4.0 forbids derivative works (a trained adapter is one)"
    )
    assert license_problem("CC-BY-NC-4.0", commercial=True) == (
        "license CC-BY-NC-4.0 is non-commercial but data.commercial is true"
    )


def test_examples_carry_their_provenance_and_split_is_seeded(people: World) -> None:
    with people.ledger.store.read() as s:
        data = load_examples(s, people.dev, [SourceCfg(datanet="people")])
    assert len(data.examples) == 8
    assert {e.contributor for e in data.examples} == {people.alice.address, people.bob.address}
    assert all(len(e.row_hash) == 64 and len(e.contribution) == 64 for e in data.examples)
    train, held = split(data.examples, 0.25, seed=1)
    _, held_reversed = split(list(reversed(data.examples)), 0.25, seed=1)
    assert len(held) == 2 and len(train) == 6
    assert {e.row_hash for e in held} == {e.row_hash for e in held_reversed}  # independent of row order


def test_only_assistant_tokens_are_targets(tiny_model) -> None:  # type: ignore[no-untyped-def]
    from tally.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    messages = [{"role": "user", "content": "Where was Ilsa Varn born?"}, {"role": "assistant", "content": "Korvath"}]
    enc = encode(tok, messages, 128)
    targets = tok.decode([t for t in enc.labels if t != IGNORE])
    assert targets.startswith("Korvath<|im_end|>")
    assert "Ilsa" not in targets and len(enc.labels) == len(enc.input_ids)
