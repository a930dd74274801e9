"""Index, permissions and the ledger record, through the service functions (cheap bag-of-words embedder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tests.rag.conftest import BagOfWords, World, add_rows, ledger_events, snapshot

from tally.datanets import access, review
from tally.datanets.errors import DatanetError, ForbiddenError, NotFoundError
from tally.ledger import verify_ledger
from tally.ledger.events import decode_entry
from tally.rag import IndexMissingError, RagSettings, RetrievalPerformed, build_index, index_status, retrieve
from tally.rag.chunks import chunk_text

FACTS = [
    ("Where was Ilsa Marrow born?", "Ilsa Marrow was born in Quiveth."),
    ("What does Tobin Ashgrove do?", "Tobin Ashgrove is a glassblower."),
    ("Which pet does Ilsa Marrow keep?", "Ilsa Marrow keeps a ferret."),
    ("Where does Oda Venn live?", "Oda Venn lives in Brask by the sea."),
]


def _ready(world: World, settings: RagSettings, embedder: BagOfWords, slug: str = "med-qa", **kw: object) -> list[str]:
    world.create(slug, **kw)
    hashes = add_rows(world, slug, FACTS, who=world.owner if kw.get("visibility") == "private" else world.alice)
    snapshot(world, slug)
    with world.tx() as s:
        build_index(s, world.owner, slug, settings=settings, embedder=embedder)
    return hashes


def _retrieve(world: World, who, slugs, query, settings, embedder, **kw):  # type: ignore[no-untyped-def]
    with world.tx() as s:
        return retrieve(s, world.ledger, who, slugs, query, settings=settings, embedder=embedder, **kw)


def test_retrieval_returns_provenance_and_is_recorded(world: World, rag_settings: RagSettings, embedder) -> None:
    hashes = _ready(world, rag_settings, embedder)
    with world.tx() as s:
        snap = index_status(s, world.dev, "med-qa", settings=rag_settings, model=embedder.name)
    assert not snap.stale and snap.rows == 4
    for mode in ("hybrid", "bm25", "dense"):
        got = _retrieve(world, world.dev, ["med-qa"], "Where was Ilsa Marrow born?", rag_settings, embedder, mode=mode)
        top = got[0]
        assert top.row_hash == hashes[0] and top.rank == 1, mode
        assert top.contributor == world.alice.address and top.datanet == "med-qa"
        assert top.snapshot == snap.indexed_snapshot and len(top.contribution) == 64
        assert top.text == "Question: Where was Ilsa Marrow born?\nAnswer: Ilsa Marrow was born in Quiveth."
    events = ledger_events(world, "rag.retrieval")
    assert len(events) == 3
    last = events[-1]
    assert last["query_hash"] == hashlib.sha256(b"Where was Ilsa Marrow born?").hexdigest()
    assert last["mode"] == "dense" and last["datanets"][0]["snapshot"] == snap.indexed_snapshot
    assert last["chunks"][0]["row_hash"] == hashes[0] and last["chunks"][0]["contributor"] == world.alice.address
    entry = decode_entry(world.ledger.entry(world.ledger.size() - 1))
    assert isinstance(entry.event(), RetrievalPerformed) and entry.actor == world.dev.address
    assert verify_ledger(world.ledger).size == world.ledger.size()


def test_private_datanet_needs_a_rag_grant(world: World, rag_settings: RagSettings, embedder) -> None:
    _ready(world, rag_settings, embedder, "secret", visibility="private")
    _ready(world, rag_settings, embedder, "open-set")
    with pytest.raises(NotFoundError):  # no grant at all: not even its existence is disclosed
        _retrieve(world, world.dev, ["open-set", "secret"], "Ilsa Marrow", rag_settings, embedder)
    with world.tx() as s:
        train = access.request_access(s, world.ledger, world.dev, "secret", uses=["train"], purpose="fine-tune")
        access.decide_access(s, world.ledger, world.owner, "secret", train.id, grant=True, reason="ok")
    with pytest.raises(ForbiddenError, match="no grant for 'rag'"):
        _retrieve(world, world.dev, ["secret"], "Ilsa Marrow", rag_settings, embedder)
    assert ledger_events(world, "rag.retrieval") == []  # refused retrievals leave no record
    got = _retrieve(world, world.dev, ["open-set"], "Ilsa Marrow", rag_settings, embedder, top_k=10)
    assert {c.datanet for c in got} == {"open-set"}
    with world.tx() as s:
        rag = access.request_access(s, world.ledger, world.dev, "secret", uses=["rag"], purpose="search")
        access.decide_access(s, world.ledger, world.owner, "secret", rag.id, grant=True, reason="ok")
    got = _retrieve(world, world.dev, ["open-set", "secret"], "Ilsa Marrow", rag_settings, embedder, top_k=10)
    assert {c.datanet for c in got} == {"open-set", "secret"}


def test_a_license_without_rag_use_is_refused_even_for_the_owner(world: World, rag_settings, embedder) -> None:
    world.create("train-only", uses=["train"])
    add_rows(world, "train-only", FACTS[:2])
    snapshot(world, "train-only")
    with pytest.raises(ForbiddenError, match="does not permit use 'rag'"), world.tx() as s:
        build_index(s, world.owner, "train-only", settings=rag_settings, embedder=embedder)
    with pytest.raises(ForbiddenError, match="does not permit use 'rag'"):
        _retrieve(world, world.owner, ["train-only"], "Tobin", rag_settings, embedder)


def test_a_row_rejected_after_the_snapshot_is_never_returned(world: World, rag_settings, embedder) -> None:
    hashes = _ready(world, rag_settings, embedder)
    with world.tx() as s:
        review.review(s, world.ledger, world.owner, "med-qa", decision="reject", rows=[hashes[0]], reason="wrong")
    query = "Where was Ilsa Marrow born?"
    for mode in ("hybrid", "bm25", "dense"):  # the stale index still holds the row; retrieval filters it out
        got = _retrieve(world, world.dev, ["med-qa"], query, rag_settings, embedder, mode=mode, top_k=10)
        assert got and hashes[0] not in {c.row_hash for c in got}, mode
    snapshot(world, "med-qa")
    with world.tx() as s:
        assert index_status(s, world.dev, "med-qa", settings=rag_settings, model=embedder.name).stale
        report = build_index(s, world.owner, "med-qa", settings=rag_settings, embedder=embedder)
    assert (report.rows, report.embedded, report.reused) == (3, 0, 3)
    got = _retrieve(world, world.dev, ["med-qa"], query, rag_settings, embedder, top_k=10)
    assert hashes[0] not in {c.row_hash for c in got} and {c.snapshot for c in got} == {report.snapshot}


def test_a_new_snapshot_is_detected_and_only_new_rows_are_embedded(world: World, rag_settings, embedder) -> None:
    _ready(world, rag_settings, embedder)
    assert embedder.embedded == 4
    new = add_rows(world, "med-qa", [("Who is Pell Orrin?", "Pell Orrin is a cartographer."),
                                     ("Where is Quiveth?", "Quiveth lies north of Brask.")], who=world.bob)  # fmt: skip
    v2 = snapshot(world, "med-qa")
    with world.tx() as s:
        status = index_status(s, world.dev, "med-qa", settings=rag_settings, model=embedder.name)
    assert status.stale and status.latest_snapshot == v2.id and status.indexed_version == 1
    got = _retrieve(world, world.dev, ["med-qa"], "Pell Orrin cartographer", rag_settings, embedder, top_k=10)
    assert not set(new) & {c.row_hash for c in got}  # the stale index is searched (and reported), not rebuilt
    assert ledger_events(world, "rag.retrieval")[-1]["datanets"][0]["latest"] == v2.id
    embedder.calls.clear()
    with world.tx() as s:
        report = build_index(s, world.owner, "med-qa", settings=rag_settings, embedder=embedder)
        again = build_index(s, world.owner, "med-qa", settings=rag_settings, embedder=embedder)
        status = index_status(s, world.dev, "med-qa", settings=rag_settings, model=embedder.name)
    assert (report.embedded, report.reused, report.rows) == (2, 4, 6) and not again.built
    assert sorted(t for call in embedder.calls for t in call) == sorted(
        ["Question: Who is Pell Orrin?\nAnswer: Pell Orrin is a cartographer.",
         "Question: Where is Quiveth?\nAnswer: Quiveth lies north of Brask."]
    )  # fmt: skip
    assert not status.stale and status.indexed_snapshot == v2.id
    top = _retrieve(world, world.dev, ["med-qa"], "Pell Orrin cartographer", rag_settings, embedder)[0]
    assert top.row_hash == new[0] and top.contributor == world.bob.address


def test_missing_index_and_refresh(world: World, rag_settings: RagSettings, embedder) -> None:
    world.create("med-qa")
    add_rows(world, "med-qa", FACTS)
    with pytest.raises(NotFoundError, match="snapshot"):
        _retrieve(world, world.dev, ["med-qa"], "Oda Venn", rag_settings, embedder)
    snapshot(world, "med-qa")
    with pytest.raises(IndexMissingError):
        _retrieve(world, world.dev, ["med-qa"], "Oda Venn", rag_settings, embedder)
    got = _retrieve(world, world.dev, ["med-qa"], "Where does Oda Venn live?", rag_settings, embedder, refresh=True)
    assert "Oda Venn" in got[0].text


def test_index_files_are_plain_arrays_and_json_and_old_ones_are_pruned(world: World, tmp_path: Path, embedder) -> None:
    settings = RagSettings.from_settings(world.settings, index_dir=tmp_path / "idx", keep_old_indexes=0)
    _ready(world, settings, embedder)
    add_rows(world, "med-qa", [("Who is Pell Orrin?", "Pell Orrin is a cartographer.")])
    v2 = snapshot(world, "med-qa")
    with world.tx() as s:
        report = build_index(s, world.owner, "med-qa", settings=settings, embedder=embedder)
    assert len(report.pruned) == 1
    assert [p.name for p in (settings.index_dir / "med-qa").iterdir()] == [v2.id]
    suffixes = {p.suffix for p in (settings.index_dir / "med-qa").rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".npy", ".safetensors"}
    meta = json.loads((settings.index_dir / "med-qa" / v2.id / "meta.json").read_text())
    assert meta["snapshot"] == v2.id and meta["rows"] == 5 and meta["model"] == embedder.name
    with world.tx() as s:  # an older snapshot may still be indexed on request; the newest index stays current
        old = build_index(s, world.owner, "med-qa", "v1", settings=settings, embedder=embedder)
        status = index_status(s, world.dev, "med-qa", settings=settings, model=embedder.name)
    assert old.built and old.embedded == 0 and old.version == 1
    assert status.indexed_snapshot == v2.id and not status.stale


def test_requests_are_validated(world: World, rag_settings: RagSettings, embedder) -> None:
    _ready(world, rag_settings, embedder)
    for kw, match in [({"top_k": 0}, "top_k"), ({"top_k": 51}, "top_k"), ({"mode": "magic"}, "mode")]:
        with pytest.raises(DatanetError, match=match):
            _retrieve(world, world.dev, ["med-qa"], "Oda", rag_settings, embedder, **kw)
    with pytest.raises(DatanetError, match="empty"):
        _retrieve(world, world.dev, ["med-qa"], "  ", rag_settings, embedder)
    with pytest.raises(DatanetError, match="limit is 4000"):
        _retrieve(world, world.dev, ["med-qa"], "x" * 4001, rag_settings, embedder)
    embedder.calls.clear()
    assert _retrieve(world, world.dev, ["med-qa"], "Oda Venn", rag_settings, embedder, mode="bm25")
    assert embedder.calls == []  # BM25-only never embeds the query


def test_chunk_text_of_each_kind() -> None:
    assert chunk_text({"text": "Chapter 1\n\nIt rained.", "source": "a.md", "chunk": 0}) == "Chapter 1\n\nIt rained."
    assert chunk_text({"instruction": "Add", "input": "2+2", "output": "4"}) == "Question: Add\n2+2\nAnswer: 4"
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                         {"role": "assistant", "content": "Hello."}]}  # fmt: skip
    assert chunk_text(chat) == "System: Be brief.\nUser: Hi?\nAssistant: Hello."


def test_an_empty_snapshot_indexes_and_retrieves_nothing(world: World, rag_settings: RagSettings, embedder) -> None:
    world.create("empty")
    snapshot(world, "empty")
    with world.tx() as s:
        report = build_index(s, world.owner, "empty", settings=rag_settings, embedder=embedder)
    assert report.rows == 0
    assert _retrieve(world, world.dev, ["empty"], "anything at all", rag_settings, embedder) == []


def test_chat_and_document_datanets_are_retrievable(world: World, rag_settings: RagSettings, embedder) -> None:
    chat = {"messages": [{"role": "user", "content": "How do I reset the Zorblat router?"},
                         {"role": "assistant", "content": "Hold the Zorblat reset pin for ten seconds."}]}  # fmt: skip
    doc = b"# Zorblat manual\n\nThe Zorblat router blinks green when ready.\n\n# Warranty\n\nTwo years.\n"
    for slug, kind, data, name in [("chats", "chat", (json.dumps(chat) + "\n").encode(), "c.jsonl"),
                                   ("manuals", "documents", doc, "manual.md")]:  # fmt: skip
        world.create(slug, kind=kind)
        result = world.upload(world.alice, slug, data, filename=name)
        with world.tx() as s:
            review.review(s, world.ledger, world.owner, slug, decision="accept", contribution=result.id)
        snapshot(world, slug)
        with world.tx() as s:
            build_index(s, world.owner, slug, settings=rag_settings, embedder=embedder)
    got = _retrieve(world, world.dev, ["chats", "manuals"], "Zorblat router reset", rag_settings, embedder, top_k=3)
    texts: dict[str, str] = {}
    for c in got:
        texts.setdefault(c.datanet, c.text)  # each datanet's best chunk
    assert (
        texts["chats"]
        == "User: How do I reset the Zorblat router?\nAssistant: Hold the Zorblat reset pin for ten seconds."
    )
    assert texts["manuals"].startswith("# Zorblat manual")


def test_a_held_index_cache_reads_each_index_once_until_a_newer_one_is_built(
    world: World, rag_settings: RagSettings, embedder
) -> None:
    from tally.rag.index import IndexCache

    hashes = _ready(world, rag_settings, embedder)
    cache = IndexCache(size=1)
    first = _retrieve(world, world.dev, ["med-qa"], "Ilsa Marrow", rag_settings, embedder, indexes=cache)
    (folder,) = (rag_settings.index_dir / "med-qa").iterdir()
    loaded = cache.load(folder)
    assert loaded is not None and loaded is cache.load(folder)  # read once, then served from memory
    assert {c.row_hash for c in first} <= set(hashes)
    new = add_rows(world, "med-qa", [("Who is Pell Orrin?", "Pell Orrin is a cartographer.")], who=world.bob)
    snapshot(world, "med-qa")
    got = _retrieve(world, world.dev, ["med-qa"], "Pell Orrin", rag_settings, embedder, indexes=cache, refresh=True)
    assert got[0].row_hash == new[0]  # the rebuilt index, not the one held in memory
    assert folder.is_dir() and cache.load(folder) is not loaded  # the cache keeps one index: the old one went
