"""Verbatim spans: which accepted datanet rows an answer quotes, token for token.

Why a suffix array: it answers "where does this token sequence occur?" for every row of every datanet with a
binary search, so the longest quoted run at each answer position costs O(log n) comparisons whatever the corpus
size. The maximal runs of at least `min_len` tokens, mapped back to their rows, are the span evidence.

Encoding: pydivsufsort sorts numpy integer arrays by re-encoding them as fixed-width big-endian bytes and keeping
only the suffixes that start on a token boundary. The text is stored the same way (big-endian uint16 while every
id is below 65535, as with SmolLM2's 49152 ids; uint32 otherwise), so comparing two byte slices orders them exactly
as the suffix array does and the search compares bytes (memcmp) instead of looping over tokens in Python. Rows are
joined by the dtype's largest value: never a token id, never matched, so no span crosses two rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from pydivsufsort import divsufsort
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tally.datanets.normalise import row_text
from tally.datanets.tables import ContributionRow, DataRow

FORMAT = 2
ARRAYS = ("tokens", "suffixes", "starts")
KEY_ARRAYS = ("row_hashes", "contributions", "datanet_ids", "contributor_ids")
META = "spans.json"
_ID_BYTES = 64  # row hashes and contribution ids are 64 hex digits


@dataclass(frozen=True)
class DocKey:
    row_hash: str
    datanet: str
    contribution: str
    contributor: str


class DocKeys(Sequence[DocKey]):
    """The rows' keys as fixed-width arrays (about 136 bytes a row, memory-mappable) instead of a Python object per
    row: the index covers every accepted row, so what it holds per row is what a server's memory grows by as
    datanets grow. Datanets and contributors are few and repeat: each is stored once, rows hold its number."""

    def __init__(
        self,
        row_hashes: np.ndarray,
        contributions: np.ndarray,
        datanet_ids: np.ndarray,
        contributor_ids: np.ndarray,
        datanets: list[str],
        contributors: list[str],
    ) -> None:
        self.row_hashes, self.contributions = row_hashes, contributions
        self.datanet_ids, self.contributor_ids = datanet_ids, contributor_ids
        self.datanets, self.contributors = datanets, contributors

    @classmethod
    def of(cls, keys: Sequence[DocKey]) -> DocKeys:
        builder = _KeyBuilder()
        builder.add(keys)
        return builder.done()

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in KEY_ARRAYS}

    def __len__(self) -> int:
        return len(self.row_hashes)

    @overload
    def __getitem__(self, i: int) -> DocKey: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[DocKey]: ...
    def __getitem__(self, i: int | slice) -> DocKey | Sequence[DocKey]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return DocKey(
            self.row_hashes[i].decode(), self.datanets[int(self.datanet_ids[i])],
            self.contributions[i].decode(), self.contributors[int(self.contributor_ids[i])],
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class _KeyBuilder:
    """Collects keys batch by batch into arrays, so building never holds a Python object per row."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in KEY_ARRAYS}
        self._datanets: dict[str, int] = {}
        self._contributors: dict[str, int] = {}

    def add(self, keys: Sequence[DocKey]) -> None:
        for name, values in (
            ("row_hashes", [k.row_hash for k in keys]),
            ("contributions", [k.contribution for k in keys]),
        ):
            encoded = [v.encode() for v in values]
            if any(len(v) > _ID_BYTES for v in encoded):
                raise ValueError(f"span index {name} must be at most {_ID_BYTES} bytes each")
            self._parts[name].append(np.array(encoded, dtype=f"S{_ID_BYTES}"))
        for name, table, values in (
            ("datanet_ids", self._datanets, [k.datanet for k in keys]),
            ("contributor_ids", self._contributors, [k.contributor for k in keys]),
        ):
            self._parts[name].append(np.array([table.setdefault(v, len(table)) for v in values], dtype=np.int32))

    def done(self) -> DocKeys:
        empty = {"row_hashes": f"S{_ID_BYTES}", "contributions": f"S{_ID_BYTES}"}
        arrays = {
            name: np.concatenate(parts) if parts else np.empty(0, dtype=empty.get(name, np.int32))
            for name, parts in self._parts.items()
        }
        return DocKeys(**arrays, datanets=list(self._datanets), contributors=list(self._contributors))


@dataclass(frozen=True)
class Span:
    answer_start: int  # token positions in the answer, end exclusive
    answer_end: int
    sources: tuple[DocKey, ...]  # rows holding the span, in index order, at most `max_sources`
    total: int  # how many rows hold it

    @property
    def length(self) -> int:
        return self.answer_end - self.answer_start


@dataclass(eq=False)
class SpanIndex:
    tokens: np.ndarray  # every row's ids then a separator, big-endian
    suffixes: np.ndarray  # token positions, suffixes sorted (those starting at a separator left out)
    starts: np.ndarray  # where each row begins in `tokens`
    keys: DocKeys  # one per row
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.tokens.dtype not in (np.dtype(">u2"), np.dtype(">u4")) or len(self.starts) != len(self.keys):
            raise ValueError("span index arrays are inconsistent: tokens must be >u2 or >u4, one start per row")
        self.separator = (1 << 8 * self.tokens.dtype.itemsize) - 1
        self._width = self.tokens.dtype.itemsize
        self._bytes = self.tokens.view(np.uint8).data

    @classmethod
    def build(cls, docs: Iterable[tuple[DocKey, Sequence[int]]], fingerprint: str = "") -> SpanIndex:
        docs = list(docs)
        return cls.build_batches([([k for k, _ in docs], [ids for _, ids in docs])], fingerprint)

    @classmethod
    def build_batches(
        cls, batches: Iterable[tuple[Sequence[DocKey], Sequence[Sequence[int]]]], fingerprint: str = ""
    ) -> SpanIndex:
        """The index of rows given batch by batch (keys, token ids): only one batch is ever held as Python objects."""
        keys = _KeyBuilder()
        parts: list[np.ndarray] = []  # each batch's ids, a separator after each row, as int64
        lengths: list[np.ndarray] = []
        low, high = 0, 0
        for batch_keys, batch_ids in batches:
            keys.add(batch_keys)
            rows = [np.asarray(ids, dtype=np.int64).reshape(-1) for ids in batch_ids]
            for row in rows:
                if row.size:
                    low, high = min(low, int(row.min())), max(high, int(row.max()))
            lengths.append(np.array([len(r) for r in rows], dtype=np.int64))
            parts.append(np.concatenate([np.append(r, -1) for r in rows]) if rows else np.empty(0, dtype=np.int64))
        if low < 0 or high >= 0xFFFFFFFF:
            raise ValueError(f"token ids must lie in [0, 2**32 - 1); got {low}..{high}")
        dtype, separator = (np.dtype(np.uint16), 0xFFFF) if high < 0xFFFF else (np.dtype(np.uint32), 0xFFFFFFFF)
        joined = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        joined[joined == -1] = separator
        tokens = joined.astype(dtype)
        del joined
        sizes = np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64)
        starts = np.zeros(len(sizes), dtype=np.int64)
        starts[1:] = np.cumsum(sizes + 1)[:-1]
        suffixes = divsufsort(tokens) if tokens.size else np.empty(0, dtype=np.int32)
        suffixes = suffixes[tokens[suffixes] != separator]  # a separator never starts a match
        return cls(tokens.astype(dtype.newbyteorder(">")), suffixes, starts, keys.done(), fingerprint)

    def find(self, answer_ids: Sequence[int], min_len: int = 8, max_sources: int = 20) -> list[Span]:
        """Maximal runs of at least `min_len` answer tokens that occur verbatim in one indexed row."""
        if min_len < 1:
            raise ValueError(f"min_len must be at least 1, got {min_len}")
        spans: list[Span] = []
        reach = 0  # furthest end of any run found so far: a run ending there or before is contained in it
        for first, run in self._runs(answer_ids):
            encoded = np.asarray(run, dtype=self.tokens.dtype).tobytes()
            for offset in range(len(run)):
                rest = encoded[offset * self._width :]
                length = self._longest(rest)
                if length >= min_len and first + offset + length > reach:
                    spans.append(self._span(first + offset, rest[: length * self._width], max_sources))
                reach = max(reach, first + offset + length)
        return spans

    def _runs(self, ids: Sequence[int]) -> Iterator[tuple[int, list[int]]]:
        """Stretches of ids that could match (an id out of range, the separator included, matches nothing)."""
        run: list[int] = []
        for position, token in enumerate([*ids, -1]):
            if 0 <= token < self.separator:
                run.append(int(token))
            elif run:
                yield position - len(run), run
                run = []

    def _key(self, length: int) -> Callable[[Any], bytes]:
        return lambda suffix: self._bytes[int(suffix) * self._width : int(suffix) * self._width + length].tobytes()

    def _longest(self, pattern: bytes) -> int:
        """Tokens of the longest prefix of `pattern` found: the best suffix sits next to its insertion point."""
        at = bisect_left(self.suffixes, pattern, key=self._key(len(pattern)))
        wanted = np.frombuffer(pattern, dtype=self.tokens.dtype)
        best = 0
        for i in (at - 1, at):
            if 0 <= i < len(self.suffixes):
                pos = int(self.suffixes[i])
                found = self.tokens[pos : pos + len(wanted)]
                differ = np.flatnonzero(found != wanted[: len(found)])
                best = max(best, int(differ[0]) if differ.size else len(found))
        return best

    def _span(self, start: int, pattern: bytes, max_sources: int) -> Span:
        key = self._key(len(pattern))
        lo = bisect_left(self.suffixes, pattern, key=key)
        hi = bisect_right(self.suffixes, pattern, lo=lo, key=key)
        rows = np.unique(np.searchsorted(self.starts, self.suffixes[lo:hi], side="right") - 1)
        return Span(
            start, start + len(pattern) // self._width, tuple(self.keys[int(r)] for r in rows[:max_sources]), len(rows)
        )

    def save(self, directory: Path) -> None:
        """Write the arrays (.npy, no pickle) and then the JSON that names the rows, each by an atomic rename."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {**{name: getattr(self, name) for name in ARRAYS}, **self.keys.arrays()}
        for name, array in arrays.items():
            tmp = directory / f".{name}.npy.tmp"
            with tmp.open("wb") as f:
                np.save(f, array, allow_pickle=False)
            os.replace(tmp, directory / f"{name}.npy")
        meta = {
            "format": FORMAT, "fingerprint": self.fingerprint,
            "datanets": self.keys.datanets, "contributors": self.keys.contributors,
        }  # fmt: skip
        (directory / f".{META}.tmp").write_text(json.dumps(meta))
        os.replace(directory / f".{META}.tmp", directory / META)

    @classmethod
    def load(cls, directory: Path) -> SpanIndex:
        """The index saved in `directory`, its arrays memory-mapped."""
        if not (directory / META).is_file():
            raise FileNotFoundError(
                f"no span index in {directory}: build one with tally.attribution.spans.build_from_datanets "
                "(or SpanIndex.build(...).save(directory))"
            )
        meta = json.loads((directory / META).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"span index in {directory} has format {meta.get('format')!r}, not {FORMAT}: rebuild it")
        tokens, suffixes, starts = (np.load(directory / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in ARRAYS)
        key_arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in KEY_ARRAYS}
        keys = DocKeys(**key_arrays, datanets=list(meta["datanets"]), contributors=list(meta["contributors"]))
        return cls(tokens, suffixes, starts, keys, str(meta["fingerprint"]))


def _accepted(datanets: list[str] | None) -> Select[str, str]:
    query = select(DataRow.datanet, DataRow.row_hash).where(DataRow.status == "accepted")
    return query if datanets is None else query.where(DataRow.datanet.in_(datanets))


def fingerprint(tokenizer: Any, rows: Iterable[tuple[str, str]]) -> str:
    """sha256 over the tokenizer and the `datanet:row_hash` of the indexed rows, which come sorted."""
    digest = _fingerprint_start(tokenizer)
    for datanet, row_hash in rows:
        digest.update(f"{datanet}:{row_hash}\n".encode())
    return digest.hexdigest()


def _fingerprint_start(tokenizer: Any) -> Any:
    return hashlib.sha256(f"spans/{FORMAT}\n{tokenizer.name_or_path}\n{len(tokenizer)}\n".encode())


def _accepted_sorted(session: Session, datanets: list[str] | None, batch: int = 1000) -> Iterator[tuple[str, str]]:
    """The accepted rows' (datanet, row hash), sorted by the database and streamed: never all of them in memory."""
    query = _accepted(datanets).order_by(DataRow.datanet, DataRow.row_hash).execution_options(yield_per=batch)
    yield from session.execute(query).tuples()


def build_from_datanets(
    session: Session, tokenizer: Any, directory: Path, datanets: list[str] | None = None, batch: int = 256
) -> SpanIndex:
    """Index the accepted rows of the datanets (all when None), tokenised as text, and save it in `directory`."""
    query = (
        _accepted(datanets)
        .add_columns(DataRow.contribution, ContributionRow.contributor, DataRow.content)
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .order_by(DataRow.datanet, DataRow.row_hash)
    )
    digest = _fingerprint_start(tokenizer)  # the rows come in fingerprint order: hashed as they stream by

    def batches() -> Iterator[tuple[list[DocKey], list[list[int]]]]:
        for part in session.execute(query.execution_options(yield_per=batch)).partitions():
            keys = [DocKey(h, dn, c, who) for dn, h, c, who, _ in part]
            for k in keys:
                digest.update(f"{k.datanet}:{k.row_hash}\n".encode())
            texts = [row_text(json.loads(content)) for *_, content in part]
            yield keys, tokenizer(texts, add_special_tokens=False)["input_ids"]

    index = SpanIndex.build_batches(batches())
    index.fingerprint = digest.hexdigest()
    index.save(directory)
    return index


def load_or_build(session: Session, tokenizer: Any, directory: Path, datanets: list[str] | None = None) -> SpanIndex:
    """The saved index if it covers exactly the accepted rows now (and this tokenizer); rebuilt otherwise."""
    wanted = fingerprint(tokenizer, _accepted_sorted(session, datanets))
    try:
        index = SpanIndex.load(directory)
    except (FileNotFoundError, ValueError):
        index = None
    if index is not None and index.fingerprint == wanted:
        return index
    return build_from_datanets(session, tokenizer, directory, datanets)
