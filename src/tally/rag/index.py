"""One retrieval index per datanet snapshot: chunk metadata, embeddings and a BM25 index, on disk without pickle.

Layout under `<index_dir>/<datanet>/<snapshot root>/`:
    meta.json               format, datanet, snapshot, version, model, dim, chunker version, counts
    chunks.json             [{row_hash, contribution, contributor, text}] in row-hash order
    embeddings.safetensors  float32 [rows, dim], L2-normalised, same order as chunks.json
    bm25/                   bm25s arrays (.npy, saved with allow_pickle=False) and vocabulary (.json)
Why exact search: a matrix-vector product over normalised float32 rows is exact, needs no training and measured
under the latency goal up to ~10^6 rows on this machine (docs/rag.md); an ANN index (faiss) is the next step past it.
A folder is written under a temporary name and renamed into place, so readers never see half an index.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from safetensors.numpy import load_file, save_file
from threadpoolctl import ThreadpoolController

FORMAT = 1
_STOPWORDS = "en"
_BLAS = ThreadpoolController()
SCAN_THREADS = 1  # one BLAS thread per scan: measured steadier p99 on a busy 2-core machine (docs/rag.md)


@dataclass(frozen=True)
class ChunkMeta:
    row_hash: str
    contribution: str
    contributor: str
    text: str


def tokenize(texts: list[str], ids: bool) -> Any:
    return bm25s.tokenize(texts, stopwords=_STOPWORDS, return_ids=ids, show_progress=False)


class ChunkIndex:
    """An index loaded in memory: dense and BM25 search over one snapshot's chunks."""

    def __init__(self, meta: dict[str, Any], chunks: list[ChunkMeta], emb: np.ndarray, bm25: bm25s.BM25 | None):
        self.meta, self.chunks, self.emb, self.bm25 = meta, chunks, emb, bm25

    @property
    def snapshot(self) -> str:
        return str(self.meta["snapshot"])

    def __len__(self) -> int:
        return len(self.chunks)

    def dense(self, query_vec: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(position, cosine) of the k nearest chunks, best first (exact)."""
        n = len(self.chunks)
        if n == 0 or k <= 0:
            return []
        with _BLAS.limit(limits=SCAN_THREADS, user_api="blas"):
            scores = self.emb @ query_vec
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.lexsort((top, -scores[top]))]  # ties by position: deterministic
        return [(int(i), float(scores[i])) for i in top]

    def lexical(self, query: str, k: int) -> list[tuple[int, float]]:
        """(position, BM25 score) of the k best chunks with a positive score, best first."""
        if self.bm25 is None or k <= 0:
            return []
        tokens = tokenize([query], ids=False)
        if not tokens or not tokens[0]:
            return []
        docs, scores = self.bm25.retrieve(tokens, k=min(k, len(self.chunks)), show_progress=False, n_threads=0)
        return [(int(d), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


def build_bm25(texts: list[str]) -> bm25s.BM25 | None:
    if not texts:
        return None
    retriever = bm25s.BM25()
    retriever.index(tokenize(texts, ids=True), show_progress=False)
    return retriever


def save_index(folder: Path, meta: dict[str, Any], chunks: list[ChunkMeta], emb: np.ndarray) -> ChunkIndex:
    """Write the index atomically (temporary folder, then rename) and return it loaded."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {**meta, "format": FORMAT, "rows": len(chunks), "dim": int(emb.shape[1])}
    (tmp / "chunks.json").write_text(
        json.dumps([c.__dict__ for c in chunks], ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    save_file({"embeddings": np.ascontiguousarray(emb, dtype=np.float32)}, str(tmp / "embeddings.safetensors"))
    bm25 = build_bm25([c.text for c in chunks])
    if bm25 is not None:
        bm25.save(str(tmp / "bm25"), allow_pickle=False)
    (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built the same snapshot's index first: the same content, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return ChunkIndex(meta, chunks, emb, bm25)


def read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if meta.get("format") == FORMAT else None


CACHE_SIZE = 16  # loaded indexes an IndexCache keeps (least recently used dropped first)


def load_index(folder: Path) -> ChunkIndex | None:
    """The index in `folder`, read from disk (None: no complete index there)."""
    meta = read_meta(folder)
    if meta is None:
        return None
    raw = json.loads((folder / "chunks.json").read_text(encoding="utf-8"))
    chunks = [ChunkMeta(**c) for c in raw]
    emb = load_file(str(folder / "embeddings.safetensors"))["embeddings"]
    bm25 = bm25s.BM25.load(str(folder / "bm25"), allow_pickle=False) if (folder / "bm25").is_dir() else None
    return ChunkIndex(meta, chunks, emb, bm25)


class IndexCache:
    """Loaded indexes, each kept until its meta.json changes, held by whoever serves many queries (the runtime).

    Why: reading a snapshot's embeddings and BM25 arrays costs more than searching them, so a server reads each once.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._loaded: OrderedDict[Path, tuple[float, ChunkIndex]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, folder: Path) -> ChunkIndex | None:
        try:
            stamp = (folder / "meta.json").stat().st_mtime  # taken before reading: a newer index is never missed
        except FileNotFoundError:
            return None
        with self._lock:
            hit = self._loaded.get(folder)
            if hit is not None and hit[0] == stamp:
                self._loaded.move_to_end(folder)
                return hit[1]
        index = load_index(folder)
        if index is None:
            return None
        with self._lock:
            self._loaded[folder] = (stamp, index)
            self._loaded.move_to_end(folder)
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
        return index
