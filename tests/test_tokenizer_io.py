"""``iter_text_chunks``: the streaming reader the tokenizers and the data pipeline share."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer import TokenizerError, iter_text_chunks

PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    return path


@PROPERTY
@given(text=st.text(), chunk_bytes=st.integers(1, 64))
def test_chunks_reassemble_the_file(tmp_path: Path, text: str, chunk_bytes: int) -> None:
    path = write(tmp_path, text.encode("utf-8"))
    chunks = list(iter_text_chunks(path, chunk_bytes))
    assert "".join(chunks) == text
    assert all(chunks)  # never an empty chunk


@PROPERTY
@given(
    lines=st.lists(st.text(alphabet=st.characters(exclude_characters="\n", codec="utf-8"), max_size=20)),
    chunk_bytes=st.integers(100, 200),
)
def test_chunks_end_at_newlines(tmp_path: Path, lines: list[str], chunk_bytes: int) -> None:
    """Lines shorter than a chunk are never cut."""
    text = "".join(line + "\n" for line in lines)
    path = write(tmp_path, text.encode("utf-8"))
    chunks = list(iter_text_chunks(path, chunk_bytes))
    assert all(chunk.endswith("\n") for chunk in chunks)
    assert "".join(chunks) == text


def test_long_line_cut_after_a_space(tmp_path: Path) -> None:
    text = " ".join(["word"] * 1000)
    chunks = list(iter_text_chunks(write(tmp_path, text.encode()), 100))
    assert "".join(chunks) == text
    assert all(chunk.endswith(" ") for chunk in chunks[:-1])
    assert max(map(len, chunks)) < 300  # bounded, whatever the line length


@PROPERTY
@given(
    prefix=st.text(),
    bad=st.sampled_from(
        [b"\xff", b"\xc3(", b"\xe2\x82(", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\x80"]
    ),
    suffix=st.text(),
    chunk_bytes=st.integers(1, 16),
)
def test_invalid_utf8_names_exact_byte_offset(
    tmp_path: Path, prefix: str, bad: bytes, suffix: str, chunk_bytes: int
) -> None:
    head = prefix.encode("utf-8")
    tail = suffix.encode("utf-8")
    path = write(tmp_path, head + bad + tail)
    if bad == b"\xf0\x9f\x98" and tail[:1] and 0x80 <= tail[0] < 0xC0:
        return  # the suffix completed the character: valid after all
    with pytest.raises(
        TokenizerError, match=rf"corpus\.txt: not valid UTF-8 at byte offset {len(head)}$"
    ):
        list(iter_text_chunks(path, chunk_bytes))


def test_truncated_character_at_end_of_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"abc\n" + "é".encode()[:1])
    with pytest.raises(TokenizerError, match="at byte offset 4$"):
        list(iter_text_chunks(path, 3))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"missing\.txt: file not found"):
        list(iter_text_chunks(tmp_path / "missing.txt"))


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    assert list(iter_text_chunks(write(tmp_path, b""))) == []


def test_chunk_bytes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="chunk_bytes must be positive"):
        list(iter_text_chunks(write(tmp_path, b"x"), 0))
