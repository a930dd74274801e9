"""Split documents into chunks: one datanet row, one retrieval unit and one citation each.

Why chunk by structure: a chunk that starts at a heading or a paragraph reads as a unit, so retrieval hits and
attribution shares point at something a person recognises. Markdown is cut at ATX headings first (a heading always
starts a new chunk), then at blank-line paragraphs; plain text at paragraphs only. Paragraphs are packed greedily
into chunks of at most `max_chars` characters. Only a paragraph too long for one chunk is cut inside, preferably at
a line end, then a sentence end, then a space, and consecutive pieces of it share about `overlap` characters so no
sentence is lost at a cut. The same text and settings always give the same chunks: row hashes depend on it.
"""

from __future__ import annotations

import re

_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SPACE = re.compile(r"\s")
_CUT_AFTER = (("\n", 0), (". ", 1), (" ", 0), ("\t", 0))  # separator, characters of it kept in the left piece


def chunk_text(text: str, max_chars: int = 2000, overlap: int = 200) -> list[str]:
    """Chunks of a plain-text document: paragraphs are separated by blank lines."""
    return _chunk(text, max_chars, overlap, markdown=False)


def chunk_markdown(text: str, max_chars: int = 2000, overlap: int = 200) -> list[str]:
    """Chunks of a Markdown document: sections at ATX headings (not inside code fences), then paragraphs."""
    return _chunk(text, max_chars, overlap, markdown=True)


def _chunk(text: str, max_chars: int, overlap: int, *, markdown: bool) -> list[str]:
    if max_chars < 1 or not 0 <= overlap < max_chars:
        raise ValueError(f"need max_chars >= 1 and 0 <= overlap < max_chars, got {max_chars} and {overlap}")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    chunks: list[str] = []
    for section in _sections(lines, markdown):
        chunks.extend(_pack(section, max_chars, overlap))
    return chunks


def _sections(lines: list[str], markdown: bool) -> list[list[str]]:
    """Group lines into sections (lists of paragraphs). Blank lines and headings inside a code fence do not count."""
    sections: list[list[str]] = [[]]
    paragraph: list[str] = []
    fence = ""  # the opening fence while inside a fenced code block

    def end_paragraph() -> None:
        if paragraph:
            sections[-1].append("\n".join(paragraph))
            paragraph.clear()

    for line in lines:
        if markdown and fence:
            paragraph.append(line)
            closing = _FENCE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                fence = ""
            continue
        if not line.strip():
            end_paragraph()
            continue
        if markdown and _HEADING.match(line):
            end_paragraph()
            sections.append([line])
            continue
        if markdown and (opening := _FENCE.match(line)):
            fence = opening.group(1)
        paragraph.append(line)
    end_paragraph()
    return [s for s in sections if s]


def _pack(paragraphs: list[str], max_chars: int, overlap: int) -> list[str]:
    """Greedily join paragraphs with a blank line while they fit; cut what cannot fit, with overlap."""
    chunks: list[str] = []
    current = ""
    for paragraph in paragraphs:
        joined = f"{current}\n\n{paragraph}" if current else paragraph
        if len(joined) <= max_chars:
            current = joined
        elif len(paragraph) <= max_chars:
            chunks.append(current)
            current = paragraph
        else:  # too long for any chunk: cut it, the small text before it (often a heading) going with the first piece
            chunks.extend(_split_long(joined, max_chars, overlap))
            current = ""
    if current:
        chunks.append(current)
    return chunks


def _split_long(text: str, max_chars: int, overlap: int) -> list[str]:
    """Cut one over-long text into pieces of at most max_chars, each sharing about `overlap` characters with the last.

    A cut is searched for in the back part of the window first, then anywhere that still moves forward; only a
    window with no separator at all is cut at exactly max_chars.
    """
    pieces: list[str] = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        back = start + overlap + (max_chars - overlap) // 2 + 1
        cut = _find_cut(text, back, end) or _find_cut(text, start + overlap + 1, back) or end
        piece = text[start:cut].strip()
        if piece:
            pieces.append(piece)
        start = max(cut - overlap, start + 1)
        if not text[start - 1].isspace() and (space := _SPACE.search(text, start, cut)):
            start = space.end()  # begin the overlap at a word, not inside one
    last = text[start:].strip()
    if last:
        pieces.append(last)
    return pieces


def _find_cut(text: str, lowest: int, end: int) -> int | None:
    """The end of a piece at the last separator in text[lowest:end], by preference: line end, sentence end, space."""
    for separator, kept in _CUT_AFTER:
        found = text.rfind(separator, lowest, end)
        if found >= 0:
            return found + kept
    return None
