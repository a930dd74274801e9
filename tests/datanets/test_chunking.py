"""Document chunking: structure first, size bounds always, overlap only inside a cut paragraph, determinism."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.datanets.chunking import chunk_markdown, chunk_text


def test_paragraphs_are_packed_up_to_the_limit() -> None:
    text = "\n\n".join(f"Paragraph {i} " + "x" * 30 for i in range(10))  # 10 paragraphs of about 42 characters
    chunks = chunk_text(text, max_chars=100, overlap=10)
    assert chunks == [
        "\n\n".join(text.split("\n\n")[i : i + 2]) for i in range(0, 10, 2)
    ]  # two fit in 100 (42 + 2 + 42), three do not


def test_blank_line_runs_and_crlf_are_normalised() -> None:
    assert chunk_text("One\r\nstill one\r\n\r\n\r\n  \nTwo\rthree") == ["One\nstill one\n\nTwo\nthree"]


def test_whitespace_only_text_has_no_chunks() -> None:
    assert chunk_text(" \n\t\n") == [] == chunk_markdown("\n\n")


def test_markdown_headings_start_new_chunks() -> None:
    md = "Preface.\n# One\nBody one.\n\n## Two\n\nBody two.\n#hashtag is not a heading\n"
    assert chunk_markdown(md) == ["Preface.", "# One\n\nBody one.", "## Two\n\nBody two.\n#hashtag is not a heading"]
    assert chunk_text(md) == [md.strip().replace("\n\n", "\n\n")]  # plain text ignores headings


def test_markdown_code_fences_keep_blank_lines_and_comment_lines() -> None:
    md = "# Code\n\n```python\n# a comment, not a heading\n\nx = 1\n```\n\nAfter."
    assert chunk_markdown(md) == ["# Code\n\n```python\n# a comment, not a heading\n\nx = 1\n```\n\nAfter."]
    tilde = "~~~\n# still code\n~~~\n# Heading"
    assert chunk_markdown(tilde) == ["~~~\n# still code\n~~~", "# Heading"]


def test_a_long_paragraph_is_cut_at_words_with_overlap() -> None:
    words = [f"w{i:03d}" for i in range(300)]  # 300 words of 4 characters
    chunks = chunk_text(" ".join(words), max_chars=200, overlap=40)
    assert all(len(c) <= 200 for c in chunks)
    for left, right in itertools.pairwise(chunks):
        assert right.split()[0] in left.split()  # the next piece starts inside the previous one
        assert len(set(left.split()) & set(right.split())) >= 5  # about 40 characters of overlap
    assert all(c.split()[0] in words and c.split()[-1] in words for c in chunks)  # never a cut inside a word
    covered = {w for c in chunks for w in c.split()}
    assert covered == set(words)


def test_a_heading_before_a_long_paragraph_goes_with_its_first_piece() -> None:
    chunks = chunk_markdown("# Title\n\n" + "word " * 100, max_chars=120, overlap=20)
    assert chunks[0].startswith("# Title\n\nword")
    assert all(len(c) <= 120 for c in chunks)


def test_a_cut_prefers_line_ends_then_sentence_ends() -> None:
    text = "a" * 60 + ". " + "b" * 30 + "\n" + "c" * 60
    assert chunk_text(text, max_chars=100, overlap=0)[0] == "a" * 60 + ". " + "b" * 30
    text = "a" * 60 + ". " + "b" * 30 + " " + "c" * 60
    assert chunk_text(text, max_chars=100, overlap=0)[0] == "a" * 60 + "."


def test_text_without_spaces_is_cut_at_the_limit() -> None:
    chunks = chunk_text("z" * 1000, max_chars=300, overlap=50)
    assert all(len(c) <= 300 for c in chunks) and len(chunks[0]) == 300
    assert sum(len(c) for c in chunks) >= 1000


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        chunk_text("x", max_chars=100, overlap=100)
    with pytest.raises(ValueError):
        chunk_text("x", max_chars=0, overlap=0)


_TEXT = st.lists(
    st.one_of(
        st.text(alphabet="abc XYZ.,\n", min_size=0, max_size=400),
        st.sampled_from(["\n\n", "# H\n", "## Sub\n", "```\n", "\n\n\n", " " * 5]),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, max_chars=st.integers(1, 300), overlap_share=st.floats(0, 0.99))
def test_chunks_are_bounded_deterministic_and_keep_words_whole(text: str, max_chars: int, overlap_share: float) -> None:
    overlap = int(max_chars * overlap_share)
    for chunk in (chunk_text, chunk_markdown):
        chunks = chunk(text, max_chars=max_chars, overlap=overlap)
        assert chunks == chunk(text, max_chars=max_chars, overlap=overlap)
        assert all(0 < len(c) <= max_chars and c.strip() for c in chunks)
        words = {w for c in chunks for w in c.split()}
        for word in text.split():
            if len(word) < max_chars - overlap - 1:  # a longer word may fill a whole window and be cut
                assert word in words
