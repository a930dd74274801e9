"""Prompts with numbered sources, and citations cleaned up after generation. Pure functions, no model.

Why post-process: a small model cites [7] when there are five sources, or cites [3] before [1]. Out-of-range
numbers are dropped (never guessed), the rest are renumbered in order of first appearance so a reader sees [1]
first, and each citation carries the row it points at plus the chunk sentence that best supports the claim.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources the user gives you. After each sentence that uses a "
    "source, cite it with its number in square brackets, like [1] or [1][2]. Cite only numbers that appear in the "
    "list. If the sources do not contain the answer, say that you do not know."
)
_MARK = re.compile(r"\s*((?:\[\d+(?:\s*,\s*\d+)*\])+)")  # a run of markers: [1], [1, 2], [1][2]
_NUM = re.compile(r"\d+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+")
_STOP = frozenset(
    "a an and are as at be by did do does for from has have he her his how in is it its of on or she that the "
    "their they this to was were what when where which who whom why will with".split()
)


class Source(Protocol):
    """What a numbered source needs (read-only, so frozen dataclasses such as RetrievedChunk qualify)."""

    @property
    def text(self) -> str: ...
    @property
    def datanet(self) -> str: ...
    @property
    def snapshot(self) -> str: ...
    @property
    def contribution(self) -> str: ...
    @property
    def contributor(self) -> str: ...
    @property
    def row_hash(self) -> str: ...


def build_rag_messages(question: str, chunks: Sequence[Source]) -> list[dict[str, str]]:
    """Chat messages: a system instruction to cite as [n] and a user turn with sources [1]..[N] and the question."""
    sources = "\n\n".join(f"[{n}] {c.text.strip()}" for n, c in enumerate(chunks, start=1))
    user = f"Sources:\n\n{sources}\n\nQuestion: {question.strip()}" if chunks else f"Question: {question.strip()}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def best_quote(claim: str, chunk_text: str) -> str:
    """The chunk sentence sharing the most words with the claim (the first one on a tie)."""
    sentences = [s.strip() for s in _SENTENCE_END.split(chunk_text) if s.strip()] or [chunk_text.strip()]
    words = _words(claim)
    return max(sentences, key=lambda s: len(words & _words(s)))  # max keeps the first of equals


def _sentences_with_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return spans


def postprocess_citations(answer_text: str, chunks: Sequence[Source]) -> tuple[str, list[dict[str, Any]]]:
    """(text with valid citations renumbered 1.. by first appearance, citation dicts in that order)."""
    renumber: dict[int, int] = {}
    claims: dict[int, str] = {}  # old number -> the answer sentence that first cites it
    spans = _sentences_with_spans(_MARK.sub(lambda m: " " * len(m.group(0)), answer_text))

    def claim_at(pos: int) -> str:
        for start, end in spans:
            if start <= pos <= end:
                return _MARK.sub("", answer_text[start:end]).strip()
        return ""

    def replace(m: re.Match[str]) -> str:
        kept = []
        for part in _NUM.findall(m.group(1)):
            old = int(part)
            if not 1 <= old <= len(chunks):
                continue
            if old not in renumber:
                renumber[old] = len(renumber) + 1
                claims[old] = claim_at(m.start())
            if renumber[old] not in kept:
                kept.append(renumber[old])
        if not kept:
            return ""
        lead = m.group(0)[: len(m.group(0)) - len(m.group(0).lstrip())]
        return lead + "".join(f"[{n}]" for n in kept)

    clean = _MARK.sub(replace, answer_text)
    citations = []
    for old, new in sorted(renumber.items(), key=lambda kv: kv[1]):
        c = chunks[old - 1]
        citations.append({
            "number": new, "datanet": c.datanet, "snapshot": c.snapshot, "contribution": c.contribution,
            "contributor": c.contributor, "row_hash": c.row_hash, "quote": best_quote(claims[old], c.text),
        })  # fmt: skip
    return clean, citations


# --- sentence citations: markers checked, not renumbered -------------------------------------------------------------
# The answer path keeps the source numbers as the prompt gave them (a citation says which source number it is, so a
# reader matches [3] to source 3), drops numbers outside 1..N, and splits the answer into sentences whose character
# spans the measured citations refer to (tally.attribution.citations).

_SENTENCE_STOP = re.compile(r"[.!?]+(?:\s*(?:\[\d+(?:\s*,\s*\d+)*\])+)?(?=\s|$)")  # an end, with the markers after it


@dataclass(frozen=True)
class Marker:
    """A run of valid markers the model wrote, as it stands in the checked text."""

    start: int
    end: int
    sources: tuple[int, ...]  # source numbers (1-based), first appearance first, no repeats


@dataclass(frozen=True)
class Sentence:
    """One sentence of an answer: [start, end) characters, markers included, surrounding blanks excluded."""

    start: int
    end: int
    markers: tuple[int, ...]  # source numbers the model cited inside this sentence
    claim: bool = True  # False: a question (is_question), which no source can support


@dataclass(frozen=True)
class CheckedText:
    """An answer with its markers checked: `text` drops numbers outside 1..N; `position` maps an offset of the text
    as generated to the same place in `text`."""

    text: str
    markers: list[Marker]
    _edits: tuple[tuple[int, int, int, int], ...]  # (raw start, raw end, text start, text end) per rewritten run

    def position(self, raw: int) -> int:
        shift = 0
        for raw_start, raw_end, start, end in self._edits:
            if raw < raw_start:
                break
            if raw < raw_end:
                return start if raw == raw_start else end
            shift = end - raw_end
        return raw + shift


def check_markers(answer_text: str, sources: int) -> CheckedText:
    """Drop marker numbers outside 1..`sources` (a run left empty goes, with the blanks before it); a run with a
    repeat or a comma list is written as `[a][b]`; everything else stays exactly as generated."""
    parts: list[str] = []
    markers: list[Marker] = []
    edits: list[tuple[int, int, int, int]] = []
    pos = out = 0
    for m in _MARK.finditer(answer_text):
        parts.append(answer_text[pos : m.start()])
        out += m.start() - pos
        numbers = tuple(dict.fromkeys(n for n in (int(x) for x in _NUM.findall(m.group(1))) if 1 <= n <= sources))
        lead = m.group(0)[: len(m.group(0)) - len(m.group(0).lstrip())]
        new = lead + "".join(f"[{n}]" for n in numbers) if numbers else ""
        if numbers:
            markers.append(Marker(out + len(lead), out + len(new), numbers))
        if new != m.group(0):
            edits.append((m.start(), m.end(), out, out + len(new)))
        parts.append(new)
        out += len(new)
        pos = m.end()
    parts.append(answer_text[pos:])
    return CheckedText("".join(parts), markers, tuple(edits))


_LABEL = re.compile(r"^\s*(?:\[\d+\]\s*)*(?:[A-Za-z]+:\s*)?")  # leading markers and a label such as "Question:"
_ASKING = frozenset("what which where who whom whose when why how".split())


def is_question(sentence: str) -> bool:
    """A sentence that asks rather than states (ends with "?", or opens with an interrogative word after any leading
    markers and a label such as "Question:"): it makes no claim, so it needs no citation."""
    bare = _MARK.sub("", sentence).strip()
    if bare.endswith("?"):
        return True
    words = _WORD.findall(_LABEL.sub("", bare, count=1).lower())
    return bool(words) and words[0] in _ASKING and words[:2] not in (["what", "a"], ["what", "an"])  # not "What a day"


def split_sentences(text: str, markers: Sequence[Marker] = ()) -> list[Sentence]:
    """Sentences by end punctuation (markers right after the end belong to the sentence before) and line breaks."""
    spans: list[tuple[int, int]] = []
    line_start = 0
    for line in text.split("\n"):
        start = line_start
        for m in _SENTENCE_STOP.finditer(line):
            spans.append((start, line_start + m.end()))
            start = line_start + m.end()
        spans.append((start, line_start + len(line)))
        line_start += len(line) + 1
    sentences = []
    for start, end in spans:
        piece = text[start:end]
        if not piece.strip() or _MARK.fullmatch(piece):
            continue
        start += len(piece) - len(piece.lstrip())
        end -= len(piece) - len(piece.rstrip())
        cited = tuple(dict.fromkeys(n for mk in markers if start <= mk.start < end for n in mk.sources))
        sentences.append(Sentence(start, end, cited, not is_question(text[start:end])))
    return sentences
