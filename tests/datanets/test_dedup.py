"""Near-duplicate detection: edited copies are found, unrelated rows are not, signatures are stable bytes, and
the LSH band keys live in the database beside the rows."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash
from sqlalchemy import func, select
from tests.datanets.conftest import World, alpaca

from tally.datanets import contribute as contrib
from tally.datanets.dedup import (
    BandLayout,
    DedupSettings,
    minhash_signature,
    shingle_hashes,
    signature_similarity,
)
from tally.datanets.formats import row_hash
from tally.datanets.tables import RowBand

ORIGINAL = (
    "To reset a forgotten password, open the settings page, choose the account tab, press the reset button and "
    "follow the link that arrives by email within a few minutes; the link expires after one hour, so request a "
    "new one if it has expired before you used it."
)
EDITED = ORIGINAL.replace("press the", "click the")  # one word changed: true Jaccard 0.878
UNRELATED = (
    "The river delta supports a wide range of migratory birds, which arrive in late autumn and leave again when "
    "the spring floods cover the mud flats where they feed."
)


def _row(text: str) -> tuple[str, str]:
    return ("Summarise this.", text)


def _hash(text: str) -> str:
    return row_hash({"instruction": "Summarise this.", "input": "", "output": text})


def _keys(world: World, slug: str = "med-qa") -> int:
    with world.ledger.store.read() as s:
        return s.execute(select(func.count()).select_from(RowBand).where(RowBand.datanet == slug)).scalar() or 0


def test_a_lightly_edited_row_is_a_near_duplicate_and_an_unrelated_row_is_not(world: World) -> None:
    world.create(policy="open")
    near = contrib.NearDups()
    world.upload(world.alice, "med-qa", alpaca([_row(ORIGINAL), _row(UNRELATED)]), near_dups=near)
    found = world.upload(world.bob, "med-qa", alpaca([_row(EDITED)]), near_dups=near).near_duplicates
    assert [d["resembles"] for d in found] == [_hash(ORIGINAL)]
    assert 0.8 <= float(found[0]["similarity"]) < 1.0  # type: ignore[arg-type]
    other = alpaca([_row("Something else entirely, about cooking rice in a pot.")])
    assert world.upload(world.bob, "med-qa", other, near_dups=near).near_duplicates == []


def test_rows_of_the_same_upload_are_compared_too(world: World) -> None:
    world.create(policy="open")
    found = world.upload(world.alice, "med-qa", alpaca([_row(ORIGINAL), _row(EDITED)])).near_duplicates
    assert [(d["line"], d["resembles"]) for d in found] == [(2, _hash(ORIGINAL))]


def test_case_and_whitespace_do_not_matter() -> None:
    messy = "  " + ORIGINAL.upper().replace(" ", " \n\t ") + "\n"
    assert minhash_signature(messy) == minhash_signature(ORIGINAL)


def test_the_most_similar_stored_row_is_named_at_a_lower_threshold(world: World) -> None:
    settings = world.settings.datanets.model_copy(update={"near_dup_threshold": 0.5})
    world.create(policy="open")
    words = ORIGINAL.split()
    one_edit = " ".join([*words[:-1], "again."])
    half = " ".join(words[: len(words) * 2 // 3])
    world.upload(world.alice, "med-qa", alpaca([_row(half)]), settings=settings)
    world.upload(world.alice, "med-qa", alpaca([_row(one_edit)]), settings=settings)
    found = world.upload(world.bob, "med-qa", alpaca([_row(ORIGINAL)]), settings=settings).near_duplicates
    assert [d["resembles"] for d in found] == [_hash(one_edit)]
    assert signature_similarity(minhash_signature(ORIGINAL), minhash_signature(half)) >= 0.5  # half was a candidate


def test_band_keys_are_stored_per_row_and_rolled_back_with_it(world: World) -> None:
    world.create(policy="open")
    layout = BandLayout.for_settings(DedupSettings(threshold=world.settings.datanets.near_dup_threshold))
    assert layout.bands * layout.rows <= 128 and layout.bands >= 2
    world.upload(world.alice, "med-qa", alpaca([_row(ORIGINAL), _row(UNRELATED)]))
    assert _keys(world) == 2 * layout.bands
    with pytest.raises(RuntimeError), world.tx() as s:
        contrib.contribute(
            s, world.ledger, world.alice, "med-qa", alpaca([_row(ORIGINAL + " Extra.")]), "x.jsonl",
            settings=world.settings.datanets, chain_id=world.settings.chain_id,
        )  # fmt: skip
        raise RuntimeError("rolled back")
    assert _keys(world) == 2 * layout.bands
    assert world.upload(world.bob, "med-qa", alpaca([_row(ORIGINAL + " Extra!")])).near_duplicates[0]["resembles"] == (
        _hash(ORIGINAL)
    )


def test_rows_without_keys_are_keyed_from_their_signatures(world: World) -> None:
    """Rows stored before band keys were (or under another threshold's layout) get keys from the stored signatures
    the first time an upload to their datanet needs them; a held NearDups notices a rolled back backfill."""
    world.create(policy="open")
    world.upload(world.alice, "med-qa", alpaca([_row(ORIGINAL), _row(UNRELATED)]))
    with world.tx() as s:
        s.execute(RowBand.__table__.delete())
    near = contrib.NearDups()
    with pytest.raises(RuntimeError), world.tx() as s:
        contrib.contribute(
            s, world.ledger, world.bob, "med-qa", alpaca([_row("A row of its own about nothing much.")]), "y.jsonl",
            settings=world.settings.datanets, chain_id=world.settings.chain_id, near_dups=near,
        )  # fmt: skip
        raise RuntimeError("rolled back")
    assert _keys(world) == 0
    found = world.upload(world.bob, "med-qa", alpaca([_row(EDITED)]), near_dups=near).near_duplicates
    assert [d["resembles"] for d in found] == [_hash(ORIGINAL)]
    lower = world.settings.datanets.model_copy(update={"near_dup_threshold": 0.5})
    layout = BandLayout.for_settings(DedupSettings(threshold=0.5))
    world.upload(world.bob, "med-qa", alpaca([_row("Yet another unrelated row about boats.")]), settings=lower)
    with world.ledger.store.read() as s:
        layouts = dict(s.execute(select(RowBand.layout, func.count()).group_by(RowBand.layout)).all())
    assert layouts[layout.name] == 4 * layout.bands  # every row keyed under the new layout as well


def test_signatures_round_trip_through_bytes() -> None:
    sig = minhash_signature(ORIGINAL)
    assert isinstance(sig, bytes) and len(sig) == 128 * 8
    values = np.frombuffer(sig, dtype="<u8")
    assert values.astype("<u8").tobytes() == sig
    assert minhash_signature(ORIGINAL) == sig  # deterministic (no per-process hash salt)
    layout = BandLayout(bands=16, rows=8)
    keys = layout.keys(bytes(bytearray(sig)))  # e.g. as read back from a database column
    assert keys == layout.keys(sig) and len(set(keys)) == 16
    assert all(-(2**63) <= k < 2**63 for k in keys)  # fits a signed 64-bit column


def test_equal_values_in_different_bands_give_different_keys() -> None:
    sig = b"\x01" * (8 * 128)
    assert len(set(BandLayout(bands=16, rows=8).keys(sig))) == 16


def test_signature_is_datasketchs_minhash() -> None:
    """The vectorised signature equals datasketch's own MinHash (affine64 scheme) over the same shingle hashes."""
    rng = random.Random(5)
    for n_words in (0, 1, 2, 3, 40, 20_000):
        text = " ".join(
            rng.choice(["alpha", "beta", "gamma", "délta", "ｆｕｌｌ"]) + str(rng.randint(0, 99))
            for _ in range(n_words)
        )
        for settings in (DedupSettings(), DedupSettings(num_perm=32, seed=7, shingle_words=5)):
            reference = MinHash(num_perm=settings.num_perm, seed=settings.seed, hashfunc=lambda h: h, scheme="affine64")
            reference.update_batch(shingle_hashes(text, settings.shingle_words))
            assert minhash_signature(text, settings) == reference.hashvalues.astype("<u8").tobytes()
            assert signature_similarity(minhash_signature(text, settings), minhash_signature(text, settings)) == 1.0


def test_short_texts_are_one_shingle() -> None:
    assert len(shingle_hashes("hello world", 3)) == 1
    assert len(shingle_hashes("", 3)) == 1
    assert len(shingle_hashes("a b c d", 3)) == 2
    assert minhash_signature("Hello  world") == minhash_signature("hello world") != minhash_signature("hello")


def test_word_order_matters_within_a_shingle() -> None:
    assert set(shingle_hashes("a b c").tolist()) != set(shingle_hashes("c b a").tolist())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        DedupSettings(threshold=0)
    with pytest.raises(ValueError):
        DedupSettings(num_perm=1)


def test_many_rows_stay_fast(world: World) -> None:
    """2,000 rows signed, keyed and looked up through the database; a regression guard, not a benchmark."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    world.create(policy="open")
    near = contrib.NearDups()
    for part in range(20):
        rows = [_row(" ".join(rng.choice(vocab) for _ in range(60))) for _ in range(100)]
        assert (
            world.upload(world.alice, "med-qa", alpaca(rows), f"part-{part}.jsonl", near_dups=near).near_duplicates
            == []
        )
    layout = BandLayout.for_settings(DedupSettings(threshold=world.settings.datanets.near_dup_threshold))
    assert _keys(world) == 2000 * layout.bands
