"""Bad input gives a ``TokenizerError`` whose message names the file and the problem."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tokenizer import TokenizerError, load_tokenizer, train_tokenizer

KINDS = ["char", "word", "bpe", "unigram"]
SP_VOCAB = 300


def vocab_for(kind: str) -> int | None:
    return SP_VOCAB if kind in ("bpe", "unigram") else None


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.txt"
    rng = random.Random(0)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 9))) for _ in range(400)
    ]
    lines = [" ".join(rng.choices(words, k=12)) for _ in range(300)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def saved_dirs(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saved")
    dirs = {}
    for kind in KINDS:
        train_tokenizer(kind, [small_corpus], vocab_for(kind)).save(root / kind)
        dirs[kind] = root / kind
    return dirs


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


# --- training inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_missing_file(kind: str, tmp_path: Path, small_corpus: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(TokenizerError, match=r"nope\.txt: file not found"):
        train_tokenizer(kind, [small_corpus, missing], vocab_for(kind))


def test_directory_as_input(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="is a directory"):
        train_tokenizer("char", [tmp_path])


def test_no_inputs() -> None:
    with pytest.raises(TokenizerError, match="no input files"):
        train_tokenizer("char", [])


@pytest.mark.parametrize("kind", KINDS)
def test_empty_file(kind: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match=r"empty\.txt: empty file"):
        train_tokenizer(kind, [empty], vocab_for(kind))


@pytest.mark.parametrize("kind", ["word", "bpe", "unigram"])
def test_corpus_without_content(kind: str, tmp_path: Path) -> None:
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n\n" if kind != "word" else "  \n\t\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"blank\.txt: empty corpus"):
        train_tokenizer(kind, [blank], vocab_for(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_not_utf8_names_byte_offset(kind: str, tmp_path: Path) -> None:
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(b"hello world\n" * 100 + b"caf\xe9\n" + b"more text\n")
    with pytest.raises(TokenizerError, match=r"corpus\.txt: not valid UTF-8 at byte offset 1203$"):
        train_tokenizer(kind, [bad], vocab_for(kind))


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_not_utf8_across_chunk_boundary(kind: str, tmp_path: Path) -> None:
    bad = tmp_path / "corpus.txt"
    # A 3-byte character cut short by an ASCII byte, straddling the 64-byte chunk edge.
    bad.write_bytes(b"x" * 63 + b"\xe2\x82" + b"y\n" * 50)
    with pytest.raises(TokenizerError, match="at byte offset 63$"):
        train_tokenizer(kind, [bad], vocab_for(kind), chunk_bytes=64)


@pytest.mark.parametrize(
    ("kind", "vocab_size", "options", "message"),
    [
        ("char", 100, {}, r"vocab_size 100 is too small .* need at least 260"),
        ("char", 4, {"unk_policy": "unk"}, r"vocab_size 4 is too small .* need at least 5"),
        ("word", 4, {}, r"vocab_size 4 is too small .* need at least 5"),
        ("word", 3, {}, r"vocab_size 3 is too small"),
        ("bpe", 100, {}, r"vocab_size 100 is too small for a bpe tokenizer on .*small\.txt"),
        ("unigram", 50, {}, r"vocab_size 50 is too small for a unigram tokenizer"),
    ],
)
def test_vocab_size_too_small(
    small_corpus: Path, kind: str, vocab_size: int, options: dict, message: str
) -> None:
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(kind, [small_corpus], vocab_size, **options)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_vocab_size_too_large(small_corpus: Path, kind: str) -> None:
    with pytest.raises(
        TokenizerError,
        match=rf"vocab_size 100000 is too large for a {kind} tokenizer on .*small\.txt: "
        r"this corpus supports at most \d+",
    ):
        train_tokenizer(kind, [small_corpus], 100_000)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_needs_vocab_size(small_corpus: Path, kind: str) -> None:
    with pytest.raises(TokenizerError, match=f"vocab_size is required for a {kind} tokenizer"):
        train_tokenizer(kind, [small_corpus], None)


def test_unknown_kind(small_corpus: Path) -> None:
    with pytest.raises(
        TokenizerError,
        match=r"unknown tokenizer kind 'wordpiece' \(choose from char, word, bpe, unigram\)",
    ):
        train_tokenizer("wordpiece", [small_corpus], 100)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        (
            "char",
            {"min_freq": 2},
            r"unknown option 'min_freq' for a char tokenizer \(accepted: unk_policy",
        ),
        (
            "char",
            {"unk_policy": "drop"},
            r"unk_policy must be one of byte_fallback, unk; got 'drop'",
        ),
        ("word", {"min_freq": 0}, r"min_freq must be an integer >= 1, got 0"),
        ("word", {"split_regex": "("}, r"split_regex '\(' is not a valid regex"),
        ("word", {"split_regex": r"\w*"}, r"matches the empty string"),
        ("word", {"vocab_size": 10, "max_size": 20}, r"vocab_size and max_size mean the same cap"),
        ("bpe", {"model_type": "unigram"}, r"model_type 'unigram' contradicts kind 'bpe'"),
        ("bpe", {"character_coverage": 1.5}, r"character_coverage must be in \(0, 1\], got 1.5"),
    ],
)
def test_bad_options(small_corpus: Path, kind: str, options: dict, message: str) -> None:
    vocab_size = options.pop("vocab_size", vocab_for(kind))
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(kind, [small_corpus], vocab_size, **options)


@pytest.mark.parametrize("vocab_size", [-1, 2.5, True])
def test_bad_vocab_size_type(small_corpus: Path, vocab_size: object) -> None:
    with pytest.raises(TokenizerError, match="vocab_size must be a non-negative integer"):
        train_tokenizer("char", [small_corpus], vocab_size)  # type: ignore[arg-type]


def test_errors_are_value_errors() -> None:
    assert issubclass(TokenizerError, ValueError)


# --- tokenizer directories -----------------------------------------------------------------


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"absent: tokenizer directory not found"):
        load_tokenizer(tmp_path / "absent")


def test_load_directory_without_meta(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: missing"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"kind": "char", ', r"tokenizer\.json: corrupt JSON at line 1"),
        (b"\xff\xfe", r"tokenizer\.json: corrupt \(not valid UTF-8 at byte offset 0\)"),
        (b'{"kind": "char"}', r"tokenizer\.json: not an lmforge tokenizer file"),
        (b"[1, 2]", r"tokenizer\.json: not an lmforge tokenizer file"),
    ],
)
def test_load_corrupt_meta(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(tmp_path)


def edit_meta(directory: Path, **changes: object) -> None:
    path = directory / "tokenizer.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    path.write_text(json.dumps(meta), encoding="utf-8")


@pytest.mark.parametrize(
    ("kind", "changes", "message"),
    [
        (
            "char",
            {"kind": "sentencepiece"},
            r"tokenizer\.json: unknown tokenizer kind 'sentencepiece'",
        ),
        ("char", {"version": 99}, r"tokenizer\.json: unsupported version 99"),
        ("char", {"chars": None}, r"tokenizer\.json: field 'chars' is missing"),
        ("char", {"chars": "abc"}, r"tokenizer\.json: field 'chars' must be list"),
        (
            "char",
            {"chars": ["ab"]},
            r"tokenizer\.json: vocabulary entries must be single characters",
        ),
        (
            "char",
            {"vocab_size": 7},
            r"tokenizer\.json: vocab_size is 7 but the saved characters give",
        ),
        ("word", {"words": ["a", "a"]}, r"tokenizer\.json: vocabulary has duplicate words"),
        ("word", {"words": ["<unk>"]}, r"tokenizer\.json: vocabulary entry '<unk>' is a reserved"),
        ("word", {"lowercase": "yes"}, r"tokenizer\.json: field 'lowercase' must be bool"),
        ("word", {"special_tokens": {"<pad>": 5}}, r"tokenizer\.json: special_tokens must be"),
        (
            "bpe",
            {"vocab_size": 12},
            r"tokenizer\.json: vocab_size is 12 but tokenizer\.model has 300",
        ),
        ("bpe", {"model_file": "../x.model"}, r"model_file must be a file name"),
    ],
)
def test_load_inconsistent_meta(
    saved_dirs: dict[str, Path], tmp_path: Path, kind: str, changes: dict, message: str
) -> None:
    directory = copy_of(saved_dirs[kind], tmp_path)
    edit_meta(directory, **changes)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(directory)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_load_missing_model_file(saved_dirs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    directory = copy_of(saved_dirs[kind], tmp_path)
    (directory / "tokenizer.model").unlink()
    with pytest.raises(
        TokenizerError, match=r"tokenizer\.model: missing \(incomplete tokenizer directory\)"
    ):
        load_tokenizer(directory)


@pytest.mark.parametrize("content", [b"garbage", b"", b"\x00" * 64])
def test_load_corrupt_model_file(
    saved_dirs: dict[str, Path], tmp_path: Path, content: bytes
) -> None:
    directory = copy_of(saved_dirs["bpe"], tmp_path)
    (directory / "tokenizer.model").write_bytes(content)
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: not a valid sentencepiece model"):
        load_tokenizer(directory)


def test_load_truncated_model_file(saved_dirs: dict[str, Path], tmp_path: Path) -> None:
    directory = copy_of(saved_dirs["unigram"], tmp_path)
    model = directory / "tokenizer.model"
    model.write_bytes(model.read_bytes()[:500])
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: not a valid sentencepiece model"):
        load_tokenizer(directory)


def test_save_into_nested_new_directory(saved_dirs: dict[str, Path], tmp_path: Path) -> None:
    tok = load_tokenizer(saved_dirs["bpe"])
    tok.save(tmp_path / "a" / "b")
    assert load_tokenizer(tmp_path / "a" / "b").encode("a line 1") == tok.encode("a line 1")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [
        "tokenizer.json",
        "tokenizer.model",
    ]
