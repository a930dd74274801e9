"""Near-duplicate detection for datanet rows: MinHash signatures and an LSH index (datasketch).

Why: exact row hashes catch copies, not a copy with a typo fixed or a sentence added. A MinHash signature estimates
the Jaccard similarity of two rows' word shingles; MinHashLSH finds the rows likely above the threshold without
comparing against every stored row. Signatures are plain bytes (num_perm little-endian uint64 values, never a
pickle) in a database column, and so are the LSH band keys (`BandLayout`): the index is the database's, never a
structure in memory that grows with the data.

A signature depends on the text normalisation, the shingle hash and datasketch's "affine64" permutations drawn from
`seed`; SIGNATURE_VERSION names that recipe, and stored signatures must be recomputed if it ever changes.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SIGNATURE_VERSION = "tally-minhash-v1 (NFKC, lowercase, word shingles, blake2b-64, datasketch affine64)"
_SCHEME = "affine64"
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier that folds a shingle's word hashes into one 64-bit hash
_BLOCK = 8192  # shingles per vectorised step: bounds the working array at 8 MB for num_perm=128


@dataclass(frozen=True)
class DedupSettings:
    """Near-duplicate settings. Signatures made with different num_perm, shingle_words or seed do not compare."""

    threshold: float = 0.8  # estimated Jaccard similarity at or above which a row counts as a near-duplicate
    num_perm: int = 128
    shingle_words: int = 3
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2 or self.shingle_words < 1:
            raise ValueError("need num_perm >= 2 and shingle_words >= 1")


def normalise_words(text: str) -> list[str]:
    """The words shingles are made of: NFKC-normalised, lowercased, split on any run of whitespace."""
    return unicodedata.normalize("NFKC", text).lower().split()


def shingle_hashes(text: str, shingle_words: int = 3) -> np.ndarray:
    """64-bit hashes of the text's word shingles (with repeats); a text shorter than one shingle is one shingle."""
    return _shingles(normalise_words(text), shingle_words, _hash_words)


def _shingles(words: list[str], shingle_words: int, hash_words: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    if len(words) < shingle_words:
        return np.array([_hash64(" ".join(words))], dtype=np.uint64)
    hashes = hash_words(words)
    count = len(words) - shingle_words + 1
    folded = hashes[:count]
    for offset in range(1, shingle_words):  # polynomial fold: order matters, "a b c" differs from "c b a"
        folded = folded * _POLY + hashes[offset : offset + count]
    return folded


def _hash64(word: str) -> int:
    """A stable 64-bit hash (Python's hash() is salted per process, so it cannot be stored)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _hash_words(words: list[str]) -> np.ndarray:
    return np.array([_hash64(w) for w in words], dtype=np.uint64)


class MinHasher:
    """Signs texts with one DedupSettings, keeping what signing many rows reuses.

    Why an object: drawing datasketch's permutations costs more than signing a row, and hashing words dominates
    signing time while most words repeat across rows. Whoever signs many rows holds one (the runtime's near-duplicate
    indexes, a benchmark), so the word cache lives exactly as long as its owner. Threads may share one: a lost or
    cleared cache entry only costs a hash.
    """

    def __init__(self, settings: DedupSettings = DedupSettings(), max_words: int = 1 << 17) -> None:
        from datasketch import MinHash  # datasketch pulls in scipy: imported where used, so the CLI starts fast

        self.settings = settings
        self._a, self._b = MinHash(num_perm=settings.num_perm, seed=settings.seed, scheme=_SCHEME).permutations
        self._words: dict[str, int] = {}
        self._max_words = max_words  # 2^17 words is about 20 MB; the cache is cleared when full (any entry may go)

    def signature(self, text: str) -> bytes:
        """The text's MinHash as num_perm little-endian uint64 values (8 * num_perm bytes).

        The values are exactly what datasketch's MinHash(scheme="affine64").update_batch gives for the same shingle
        hashes (each hash pre-mixed with MurmurHash3's 64-bit finalizer, then min over a * h + b modulo 2^64); this
        computes them in one vectorised step without building a MinHash per row, and a test holds the two equal.
        """
        shingles = _shingles(normalise_words(text), self.settings.shingle_words, self._word_hashes)
        mixed = _fmix64(shingles)
        minima = np.full(self.settings.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(mixed), _BLOCK):  # blocks bound memory for very long texts
            permuted = np.multiply.outer(mixed[start : start + _BLOCK], self._a)
            permuted += self._b
            np.minimum(minima, permuted.min(axis=0), out=minima)
        return minima.astype("<u8").tobytes()

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        cache = self._words
        found = list(map(cache.get, words))
        try:
            return np.array(found, dtype=np.uint64)
        except TypeError:  # some words not cached yet (None in the list)
            pass
        if len(cache) > self._max_words:
            cache.clear()
        for i, value in enumerate(found):
            if value is None:
                found[i] = cache[words[i]] = _hash64(words[i])
        return np.array(found, dtype=np.uint64)


def minhash_signature(text: str, settings: DedupSettings = DedupSettings()) -> bytes:
    """The text's MinHash signature (see MinHasher.signature); to sign many rows, hold one MinHasher instead."""
    return MinHasher(settings).signature(text)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, the pre-mix datasketch's affine64 scheme applies to every input hash."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def signature_similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of two signatures: the share of positions where they agree."""
    if len(a) != len(b):
        raise ValueError(f"signatures of different lengths ({len(a)} and {len(b)} bytes) do not compare")
    return float(np.count_nonzero(np.frombuffer(a, "<u8") == np.frombuffer(b, "<u8"))) / (len(a) // 8)


@dataclass(frozen=True)
class BandLayout:
    """How a signature is cut into LSH bands: `bands` bands of `rows` values each. Two rows share a band key (and are
    compared) with probability 1 - (1 - s^rows)^bands for Jaccard similarity s; datasketch picks the layout that
    balances missed and needless comparisons at the threshold."""

    bands: int
    rows: int

    @classmethod
    def for_settings(cls, settings: DedupSettings) -> BandLayout:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
        return cls(bands=lsh.b, rows=lsh.r)

    @property
    def name(self) -> str:
        return f"{self.bands}x{self.rows}"

    def keys(self, signature: bytes) -> list[int]:
        """One signed 64-bit key per band (what a database column holds): a hash of the band's index and values, so
        equal values in different bands never match."""
        width = 8 * self.rows
        return [
            int.from_bytes(
                hashlib.blake2b(signature[i * width : (i + 1) * width], digest_size=8, salt=i.to_bytes(2)).digest(),
                "little",
                signed=True,
            )
            for i in range(self.bands)
        ]
