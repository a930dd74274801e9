"""Upload parsing: every format normalised, detection and overrides, and each refusal with its exact message."""

from __future__ import annotations

import json
import pickle

import pytest

from tally.datanets.formats import UploadError, UploadLimits, detect_format, parse_upload, row_hash
from tally.ledger.canonical import canonical_json


def jsonl(*rows: object) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def refused(data: bytes, filename: str, **kwargs: object) -> str:
    with pytest.raises(UploadError) as info:
        parse_upload(data, filename, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


CHAT = [("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?"), ("assistant", "6")]
SHAREGPT_TAGS = {"system": "system", "user": "human", "assistant": "gpt"}


# --- formats and normal forms ---


def test_alpaca_rows_are_normalised_with_default_input() -> None:
    parsed = parse_upload(
        jsonl({"instruction": "Add", "input": "2 and 2", "output": "4"}, {"instruction": "Greet", "output": "Hi"}),
        "data.jsonl",
    )
    assert (parsed.format, parsed.kind) == ("alpaca", "instruction")
    assert [r.content for r in parsed.rows] == [
        {"instruction": "Add", "input": "2 and 2", "output": "4"},
        {"instruction": "Greet", "input": "", "output": "Hi"},
    ]
    assert [r.line for r in parsed.rows] == [1, 2]
    assert [r.text for r in parsed.rows] == ["Add\n2 and 2\n4", "Greet\nHi"]


def test_alpaca_input_null_is_the_same_row_as_input_missing() -> None:
    a = parse_upload(jsonl({"instruction": "Greet", "input": None, "output": "Hi"}), "a.jsonl").rows[0]
    b = parse_upload(jsonl({"instruction": "Greet", "output": "Hi"}), "b.jsonl").rows[0]
    assert a.row_hash == b.row_hash


def test_row_hash_is_sha256_of_canonical_json() -> None:
    row = parse_upload(jsonl({"output": "Hi", "instruction": "Greet"}), "a.jsonl").rows[0]
    import hashlib

    assert row.row_hash == hashlib.sha256(canonical_json(row.content)).hexdigest() == row_hash(row.content)
    assert canonical_json(row.content) == b'{"input":"","instruction":"Greet","output":"Hi"}'


def test_the_same_conversation_in_sharegpt_and_openai_hashes_the_same() -> None:
    sharegpt = {"conversations": [{"from": SHAREGPT_TAGS[role], "value": text} for role, text in CHAT]}
    openai = {"messages": [{"role": role, "content": text} for role, text in CHAT]}
    a = parse_upload(jsonl(sharegpt), "a.jsonl")
    b = parse_upload(jsonl(openai), "b.jsonl")
    assert (a.format, a.kind, b.format, b.kind) == ("sharegpt", "chat", "openai", "chat")
    assert a.rows[0].content == b.rows[0].content == {"messages": [{"role": r, "content": t} for r, t in CHAT]}
    assert a.rows[0].row_hash == b.rows[0].row_hash
    assert a.rows[0].text == "Be brief.\nWhat is 2+2?\n4\nAnd 3+3?\n6"


def test_sharegpt_variants_top_level_system_and_openai_roles_normalise_alike() -> None:
    sharegpt = {
        "system": "Be brief.",
        "conversations": [{"from": "user", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
    }
    openai = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Yo"},
        ]
    }
    a, b = parse_upload(jsonl(sharegpt), "a.jsonl").rows[0], parse_upload(jsonl(openai), "b.jsonl").rows[0]
    assert a.content == b.content
    assert a.content["messages"][0] == {"role": "system", "content": "Be brief."}


def test_openai_text_parts_are_joined_with_newlines() -> None:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Line one"}, {"type": "text", "text": "Line two"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "tool", "content": "42"},
        ]
    }
    content = parse_upload(jsonl(row), "o.jsonl").rows[0].content
    assert content["messages"][0] == {"role": "user", "content": "Line one\nLine two"}
    assert content["messages"][2]["role"] == "tool"


def test_a_json_array_file_is_read_with_the_line_each_row_starts_on() -> None:
    data = b'[\n  {"instruction": "a", "output": "b"},\n\n  {"instruction": "c",\n   "output": "d"}\n]\n'
    parsed = parse_upload(data, "alpaca_data.json")
    assert [r.line for r in parsed.rows] == [2, 4]
    assert parsed.rows[1].content == {"instruction": "c", "input": "", "output": "d"}


def test_blank_lines_are_skipped_but_counted_and_a_bom_and_crlf_are_accepted() -> None:
    data = b'\xef\xbb\xbf{"instruction": "a", "output": "b"}\r\n\r\n   \n{"instruction": "c", "output": "d"}\r\n'
    assert [r.line for r in parse_upload(data, "d.jsonl").rows] == [1, 4]


def test_text_and_markdown_documents_become_chunks() -> None:
    md = b"# Title\n\nIntro paragraph.\n\n## Part two\n\nMore text.\n"
    parsed = parse_upload(md, "/home/alice/notes.md")
    assert (parsed.format, parsed.kind) == ("markdown", "documents")
    assert [r.content for r in parsed.rows] == [
        {"text": "# Title\n\nIntro paragraph.", "source": "notes.md", "chunk": 0},
        {"text": "## Part two\n\nMore text.", "source": "notes.md", "chunk": 1},
    ]
    assert all(r.line is None and r.text == r.content["text"] for r in parsed.rows)
    txt = parse_upload(b"One.\n\nTwo.", "a.txt")
    assert (txt.format, [r.content["text"] for r in txt.rows]) == ("text", ["One.\n\nTwo."])


def test_document_chunks_follow_the_limits() -> None:
    text = ("word " * 600).encode()
    limits = UploadLimits(chunk_chars=500, chunk_overlap=50)
    rows = parse_upload(text, "long.txt", limits=limits).rows
    assert len(rows) > 5 and all(len(r.content["text"]) <= 500 for r in rows)
    assert [r.content["chunk"] for r in rows] == list(range(len(rows)))


# --- detection and overrides ---


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (b"anything", "a.txt", "text"),
        (b"anything", "a.MD", "markdown"),
        (b"anything", "a.markdown", "markdown"),
        (b'\n\n{"instruction": "a", "output": "b"}', "a.jsonl", "alpaca"),
        (b'{"output": "b"}', "a.json", "alpaca"),
        (b'{"conversations": []}', "a.jsonl", "sharegpt"),
        (b'{"messages": []}', "a.jsonl", "openai"),
        (b'[{"messages": []}]', "a.json", "openai"),
    ],
)
def test_detect_format(data: bytes, filename: str, expected: str) -> None:
    assert detect_format(data, filename) == expected


def test_unknown_keys_are_refused_with_the_keys_found_and_format_overrides() -> None:
    data = jsonl({"prompt": "a", "completion": "b"})
    assert refused(data, "d.jsonl") == (
        "d.jsonl line 1: cannot tell the format from the keys of the first row (found: prompt, completion); "
        "expected alpaca (instruction, input, output), sharegpt (conversations) or openai (messages) rows; "
        "pass format= to choose one"
    )
    assert refused(data, "d.jsonl", format="alpaca") == (
        "d.jsonl line 1, field 'instruction': missing; expected a string (Alpaca rows need instruction and output)"
    )


def test_format_override_ignores_the_extension() -> None:
    parsed = parse_upload(jsonl({"instruction": "a", "output": "b"}), "export.data", format="alpaca")
    assert parsed.format == "alpaca"
    assert parse_upload(b"# not a heading in text", "x.md", format="text").format == "text"


def test_unsupported_extension_and_unknown_format() -> None:
    assert refused(b"a,b\n1,2", "table.csv") == (
        "table.csv: unsupported file type (.csv); expected a .jsonl, .json, .txt, .md or .markdown file, "
        "or format= to say how to read it"
    )
    assert refused(b"a", "a.jsonl", format="csv") == (
        "a.jsonl: unknown format 'csv'; expected one of alpaca, sharegpt, openai, text, markdown"
    )


def test_kind_mismatch() -> None:
    assert refused(jsonl({"instruction": "a", "output": "b"}), "data.jsonl", kind="chat") == (
        "data.jsonl: this datanet holds chat rows but the file is Alpaca instruction pairs; "
        "expected a chat file (ShareGPT or OpenAI messages JSONL)"
    )
    assert refused(b"text", "notes.md", kind="instruction") == (
        "notes.md: this datanet holds instruction rows but the file is a Markdown document; "
        "expected an instruction file (Alpaca JSONL)"
    )
    assert parse_upload(b"text", "notes.md", kind="documents").kind == "documents"


# --- refusals, in the documented order ---


def test_invalid_json_names_line_and_column() -> None:
    rows = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(40)]
    rows[36] = '{"instruction": "q36" "output": "a36"}'
    assert refused("\n".join(rows).encode(), "data.jsonl") == (
        "data.jsonl line 37: invalid JSON (Expecting ',' delimiter at column 23); expected one JSON object per line"
    )


def test_invalid_json_in_an_array_file() -> None:
    data = b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]'
    assert refused(data, "d.json") == (
        "d.json line 3: invalid JSON (Expecting ',' delimiter at column 22); expected a JSON array of objects"
    )
    assert refused(b'[{"instruction": "a", "output": "b"}] []', "d.json") == (
        "d.json line 1: invalid JSON (Extra data at column 39); expected a JSON array of objects"
    )


def test_deeply_nested_json_is_refused_not_crashed() -> None:
    assert refused(b"[" * 100_000, "d.jsonl") == (
        "d.jsonl line 1: invalid JSON (nested deeper than 64 levels at column 65); expected one JSON object per line"
    )


def test_missing_field() -> None:
    data = jsonl(*[{"instruction": "q", "output": f"a{i}"} for i in range(4)], {"instruction": "q"})
    assert refused(data, "data.jsonl") == (
        "data.jsonl line 5, field 'output': missing; expected a string (Alpaca rows need instruction and output)"
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"instruction": "a", "output": "b", "text": "c"},
            "field 'text': unknown key; expected only instruction, input, output (Alpaca rows are strict)",
        ),
        ({"instruction": "a", "output": 5}, "field 'output': a number, not a string; expected a string"),
        ({"instruction": " \n", "output": "b"}, "field 'instruction': empty; expected a non-empty string"),
    ],
)
def test_alpaca_field_checks(row: dict[str, object], message: str) -> None:
    assert refused(jsonl(row), "d.jsonl") == f"d.jsonl line 1, {message}"


def test_unknown_role_tag() -> None:
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]}
    assert refused(jsonl(good, {**good, "system": "s"}, bad), "chat.jsonl") == (
        "chat.jsonl line 3, field 'conversations[1].from': unknown role tag 'robot'; "
        "expected one of human, gpt, system, user, assistant, tool"
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "field 'messages': no assistant message; expected at least one user and one assistant message",
        ),
        (
            {"messages": [{"role": "bot", "content": "hi"}]},
            "field 'messages[0].role': unknown role 'bot'; expected one of system, developer, user, assistant, tool",
        ),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
            "field 'messages[0].content': empty; expected a non-empty string",
        ),
        (
            {"messages": [{"role": "user", "content": "hi", "name": "al"}, {"role": "assistant", "content": "x"}]},
            "field 'messages[0].name': unknown key; expected only role, content (OpenAI messages are strict)",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "field 'messages[0].content[0].type': unsupported part type 'image_url'; "
            "expected 'text' (only text parts are stored)",
        ),
        (
            {"messages": "hi"},
            "field 'messages': a string, not a list; expected a list of objects with role and content",
        ),
        (
            {"messages": [["user", "hi"]]},
            "field 'messages[0]': an array, not an object; expected an object with role and content",
        ),
    ],
)  # fmt: skip
def test_openai_field_checks(row: dict[str, object], message: str) -> None:
    assert refused(jsonl(row), "o.jsonl") == f"o.jsonl line 1, {message}"


def test_empty_files() -> None:
    assert refused(b"", "empty.jsonl") == "empty.jsonl: the file is empty; expected at least one row"
    assert refused(b"\n  \n\t\n", "empty.jsonl") == "empty.jsonl: the file is empty; expected at least one row"
    assert refused(b" \n\n ", "empty.md") == "empty.md: the file is empty; expected some text"
    assert refused(b" [ ] ", "empty.json") == "empty.json: the JSON array is empty; expected at least one row"


def test_upload_over_the_size_limit_is_refused_first() -> None:
    data = b"\xff" * (25 * 1024 * 1024)  # not UTF-8 either: size is checked before anything else
    assert (
        refused(data, "big.jsonl")
        == "big.jsonl: 25.0 MB is over the upload limit of 20.0 MB (the datanet's max_upload_bytes)"
    )
    small = UploadLimits(max_bytes=100)
    assert refused(b"x" * 101, "a.txt", limits=small) == (
        "a.txt: 101 bytes is over the upload limit of 100 bytes (the datanet's max_upload_bytes)"
    )


def test_non_utf8_bytes() -> None:
    data = b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n'
    assert refused(data, "latin1.jsonl") == (
        "latin1.jsonl line 2: not UTF-8 (byte 0xe9 at offset 56); expected UTF-8 text"
    )


def test_unpaired_surrogates_are_refused() -> None:
    data = b'{"instruction": "a", "output": "x\\ud800y"}'
    assert refused(data, "s.jsonl") == (
        "s.jsonl line 1, field 'output': an unpaired surrogate (U+D800); expected valid Unicode text"
    )


def test_a_line_that_is_not_an_object() -> None:
    data = b'{"instruction": "a", "output": "b"}\n["instruction", "output"]\n'
    assert refused(data, "d.jsonl") == "d.jsonl line 2: a JSON array, not an object; expected one JSON object per line"


def test_exact_duplicates_name_both_lines() -> None:
    rows = [{"instruction": f"q{i}", "output": "a"} for i in range(8)] + [{"instruction": "q3", "output": "a"}]
    data = jsonl(*rows[:4], {}, *rows[4:]).replace(b"{}", b"")  # a blank line 5, so the repeat is on line 10
    assert refused(data, "data.jsonl") == (
        "data.jsonl line 10: line 10 repeats line 4 (the same row after normalisation); "
        "expected each row once per upload"
    )


def test_too_many_rows() -> None:
    data = jsonl(*[{"instruction": f"q{i}", "output": "a"} for i in range(4)])
    assert refused(data, "d.jsonl", limits=UploadLimits(max_rows=3)) == (
        "d.jsonl line 4: more rows than the limit of 3 (datanet limit max_rows); expected at most 3 rows per upload"
    )
    limits = UploadLimits(max_rows=2, chunk_chars=10, chunk_overlap=0)
    assert refused(b"one\n\ntwo two two\n\nthree", "d.txt", limits=limits) == (
        "d.txt: 3 chunks is more than the limit of 2 rows (datanet limit max_rows); "
        "expected at most 2 chunks: split the document or raise chunk_chars"
    )


def test_too_long_field() -> None:
    limits = UploadLimits(max_field_chars=100, chunk_chars=100, chunk_overlap=10)
    data = jsonl({"instruction": "q", "output": "a"}, {"instruction": "q", "output": "x" * 101})
    assert refused(data, "d.jsonl", limits=limits) == (
        "d.jsonl line 2, field 'output': 101 characters is over the limit of 100 (datanet limit max_field_chars); "
        "expected at most 100 characters per field"
    )


def test_checks_run_in_the_documented_order() -> None:
    """One row can break several rules; the message names the earliest rule in the documented order."""
    limits = UploadLimits(max_rows=1, max_field_chars=10, chunk_chars=10, chunk_overlap=0)
    first = jsonl({"instruction": "q", "output": "a"})
    long_and_too_many = first + b"\n" + jsonl({"instruction": "q", "output": "x" * 11})
    assert "more rows than the limit of 1" in refused(long_and_too_many, "d.jsonl", limits=limits)
    bad_field_and_too_many = first + b"\n" + jsonl({"instruction": "q"})
    assert "field 'output': missing" in refused(bad_field_and_too_many, "d.jsonl", limits=limits)
    invalid_then_not_utf8 = b"{oops\n\xff"
    assert "not UTF-8" in refused(invalid_then_not_utf8, "d.jsonl")


def test_upload_error_fields_and_pickling() -> None:
    with pytest.raises(UploadError) as info:
        parse_upload(jsonl({"instruction": "q"}), "dir/data.jsonl")
    exc = info.value
    assert (exc.file, exc.line, exc.field, exc.problem) == ("data.jsonl", 1, "output", "missing")
    assert exc.expected == "a string (Alpaca rows need instruction and output)"
    assert exc.to_dict()["message"] == str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert (str(again), again.line, again.field) == (str(exc), 1, "output")
    assert isinstance(exc, ValueError)


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="chunk_overlap"):
        UploadLimits(chunk_chars=100, chunk_overlap=100)
    with pytest.raises(ValueError, match="positive"):
        UploadLimits(max_rows=0)
