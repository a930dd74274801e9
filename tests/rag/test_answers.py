"""Prompt building and citation post-processing (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

from tally.rag import build_rag_messages, postprocess_citations
from tally.rag.answers import best_quote


@dataclass
class Chunk:
    text: str
    row_hash: str
    datanet: str = "people"
    snapshot: str = "s" * 64
    contribution: str = "c" * 64
    contributor: str = "0xabc"


CHUNKS = [
    Chunk("Question: Where was Ilsa born?\nAnswer: Ilsa Marrow was born in Quiveth.", "h1"),
    Chunk("Tobin is a glassblower. He works in Brask near the harbour. He has two ferrets.", "h2"),
    Chunk("Oda Venn lives in Brask.", "h3"),
]


def test_messages_number_the_sources_and_ask_for_citations() -> None:
    messages = build_rag_messages(" Where does Tobin work? ", CHUNKS)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "[1]" in messages[0]["content"] and "cite" in messages[0]["content"]
    user = messages[1]["content"]
    assert user.index("[1] Question: Where was Ilsa") < user.index("[2] Tobin") < user.index("[3] Oda Venn")
    assert user.endswith("Question: Where does Tobin work?")
    assert build_rag_messages("Hi?", [])[1]["content"] == "Question: Hi?"


def test_out_of_range_citations_are_dropped_and_the_rest_renumbered_by_first_appearance() -> None:
    answer = "Tobin works in Brask [2]. He keeps ferrets [7][2]. Ilsa was born in Quiveth [3, 1, 9]. Done [0]."
    clean, citations = postprocess_citations(answer, CHUNKS)
    assert clean == "Tobin works in Brask [1]. He keeps ferrets [1]. Ilsa was born in Quiveth [2][3]. Done."
    assert [(c["number"], c["row_hash"]) for c in citations] == [(1, "h2"), (2, "h3"), (3, "h1")]
    assert citations[0]["quote"] == "He works in Brask near the harbour."
    assert citations[2]["quote"] == "Answer: Ilsa Marrow was born in Quiveth."
    assert set(citations[0]) == {"number", "datanet", "snapshot", "contribution", "contributor", "row_hash", "quote"}


def test_answers_without_valid_citations_are_left_clean() -> None:
    assert postprocess_citations("No idea [4].", CHUNKS) == ("No idea.", [])
    assert postprocess_citations("No sources at all.", []) == ("No sources at all.", [])
    clean, citations = postprocess_citations("Oda lives in Brask.[3][3]", CHUNKS)
    assert clean == "Oda lives in Brask.[1]" and len(citations) == 1


def test_best_quote_prefers_the_sentence_sharing_most_words() -> None:
    assert best_quote("He keeps two ferrets", CHUNKS[1].text) == "He has two ferrets."
    assert best_quote("nothing shared", "First. Second.") == "First."


def test_checked_markers_keep_source_numbers_and_map_offsets() -> None:
    from tally.rag.answers import check_markers, split_sentences

    raw = "Tobin works in Brask [2]. He keeps ferrets [7][2]. Ilsa was born in Quiveth. [3, 1, 9] Done [0]."
    checked = check_markers(raw, len(CHUNKS))
    assert checked.text == "Tobin works in Brask [2]. He keeps ferrets [2]. Ilsa was born in Quiveth. [3][1] Done."
    assert [m.sources for m in checked.markers] == [(2,), (2,), (3, 1)]
    assert all(checked.text[m.start : m.end].startswith("[") for m in checked.markers)
    # every character outside a rewritten run maps to the same character
    for raw_pos, ch in enumerate(raw):
        pos = checked.position(raw_pos)
        if ch.isalpha():
            assert checked.text[pos] == ch, (raw_pos, pos)
    assert checked.position(len(raw)) == len(checked.text)
    sentences = split_sentences(checked.text, checked.markers)
    assert [checked.text[s.start : s.end] for s in sentences] == [
        "Tobin works in Brask [2].", "He keeps ferrets [2].", "Ilsa was born in Quiveth. [3][1]", "Done."
    ]  # fmt: skip
    assert [s.markers for s in sentences] == [(2,), (2,), (3, 1), ()]
    assert check_markers("No markers here.", 3).text == "No markers here."


def test_sentences_split_on_line_breaks_and_keep_spans() -> None:
    from tally.rag.answers import split_sentences

    text = "  First line\n\n- a point! Another? Yes\n"
    spans = [(s.start, s.end) for s in split_sentences(text)]
    assert [text[a:b] for a, b in spans] == ["First line", "- a point!", "Another?", "Yes"]
    assert split_sentences("") == [] and split_sentences("   \n ") == []
    pi = "Pi is 3.14 today. Done"
    assert [pi[s.start : s.end] for s in split_sentences(pi)] == ["Pi is 3.14 today.", "Done"]


def test_questions_are_not_claims() -> None:
    from tally.rag.answers import is_question, split_sentences

    assert is_question("Question: What is Oda's favourite drink?")
    assert is_question("[3] Question: What is Oda's occupation")  # an echoed source line, cut off
    assert is_question("Where was Ilsa born [1]?") and is_question("how so")
    assert not is_question("Answer: Oda loves eating apple pie.")
    assert not is_question("Ilsa was born in Quiveth [1].") and not is_question("What a lovely town it is.")
    text = "Question: Where was Ilsa born?\nAnswer: Ilsa was born in Quiveth."
    assert [s.claim for s in split_sentences(text)] == [False, True]
