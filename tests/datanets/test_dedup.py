"""Near-duplicate detection: edited copies are found, unrelated rows are not, signatures are stable bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash

from tally.datanets.dedup import (
    DedupSettings,
    NearDupIndex,
    minhash_signature,
    shingle_hashes,
    signature_similarity,
)

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


def test_a_lightly_edited_row_is_a_near_duplicate_and_an_unrelated_row_is_not() -> None:
    index = NearDupIndex()
    index.add("original", minhash_signature(ORIGINAL))
    index.add("unrelated", minhash_signature(UNRELATED))
    found = index.query(minhash_signature(EDITED))
    assert [key for key, _ in found] == ["original"]
    assert 0.8 <= found[0][1] < 1.0
    assert index.query(minhash_signature("Something else entirely, about cooking rice in a pot.")) == []


def test_case_and_whitespace_do_not_matter() -> None:
    messy = "  " + ORIGINAL.upper().replace(" ", " \n\t ") + "\n"
    assert minhash_signature(messy) == minhash_signature(ORIGINAL)


def test_query_returns_best_first_with_scores_at_or_above_the_threshold() -> None:
    settings = DedupSettings(threshold=0.5)
    index = NearDupIndex(settings)
    words = ORIGINAL.split()
    index.add("same", minhash_signature(ORIGINAL, settings))
    index.add("one-edit", minhash_signature(" ".join([*words[:-1], "again."]), settings))
    index.add("half", minhash_signature(" ".join(words[: len(words) * 2 // 3]), settings))
    found = index.query(minhash_signature(ORIGINAL, settings))
    assert [k for k, _ in found] == ["same", "one-edit", "half"]
    assert found[0][1] == 1.0 and all(score >= 0.5 for _, score in found)
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)


def test_signatures_round_trip_through_bytes() -> None:
    sig = minhash_signature(ORIGINAL)
    assert isinstance(sig, bytes) and len(sig) == 128 * 8
    values = np.frombuffer(sig, dtype="<u8")
    assert values.astype("<u8").tobytes() == sig
    assert minhash_signature(ORIGINAL) == sig  # deterministic (no per-process hash salt)
    index = NearDupIndex()
    index.add("k", bytes(bytearray(sig)))  # e.g. as read back from a database column
    assert index.query(sig) == [("k", 1.0)]


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


def test_index_add_is_idempotent_and_checks_signatures() -> None:
    index = NearDupIndex()
    sig = minhash_signature(ORIGINAL)
    index.add("k", sig)
    index.add("k", sig)
    assert len(index) == 1 and "k" in index
    with pytest.raises(ValueError, match="different signature"):
        index.add("k", minhash_signature(UNRELATED))
    with pytest.raises(ValueError, match="num_perm=128"):
        index.add("short", sig[:64])
    with pytest.raises(ValueError, match="does not fit"):
        index.query(sig + b"\0" * 8)
    index.remove("k")
    assert len(index) == 0 and index.query(sig) == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        DedupSettings(threshold=0)
    with pytest.raises(ValueError):
        DedupSettings(num_perm=1)


def test_many_rows_stay_fast() -> None:
    """2,000 rows signed, indexed and queried; a regression guard, not a benchmark (docs/datanet-formats.md)."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    rows = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(2000)]
    index = NearDupIndex()
    for i, row in enumerate(rows):
        sig = minhash_signature(row)
        assert index.query(sig) == []
        index.add(str(i), sig)
    assert len(index) == 2000
