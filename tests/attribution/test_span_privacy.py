"""Span evidence comes only from datanets the requester may read: a quote cannot reveal that a text is in a
private datanet."""

from __future__ import annotations

from pathlib import Path

from tests.datanets.conftest import World, alpaca, world  # noqa: F401 - fixture
from tests.factory.conftest import tiny_model  # noqa: F401 - fixture

from tally.attribution import Answer, Attributor

SECRET = "The vault code of the Drennick archive is amber seven lantern."


def test_a_private_quote_is_evidence_only_for_those_who_may_read_it(world: World, tiny_model: Path) -> None:  # noqa: F811
    world.create("secret", visibility="private", policy="open")
    world.upload(world.owner, "secret", alpaca([("What is the vault code?", SECRET)]))
    settings = world.settings.model_copy(
        update={"attribution": world.settings.attribution.model_copy(update={"span_min_tokens": 3})}
    )
    attributor = Attributor(settings, world.ledger.store, tiny_model, "tiny")
    quote = attributor.tokenizer(SECRET, add_special_tokens=False)["input_ids"]

    def attribute(readable: frozenset[str] | None, rid: str):  # the answer quotes the private row verbatim
        answer = Answer(inference_id=rid, model="tiny", prompt_ids=[1, 2, 3], answer_ids=quote, readable=readable)
        return attributor.attribute(answer, "fast").record

    stranger = attribute(frozenset({"some-public-datanet"}), "a-1")
    assert stranger.methods["spans"].top == [] and not stranger.methods["spans"].beat_null
    assert stranger.shares == []
    reader = attribute(frozenset({"secret"}), "a-2")
    assert reader.methods["spans"].beat_null and reader.methods["spans"].top[0].datanet == "secret"
    assert [s.account for s in reader.shares] == [world.owner.address]
    assert attribute(None, "a-3").methods["spans"].top == reader.methods["spans"].top  # the operator's own view
