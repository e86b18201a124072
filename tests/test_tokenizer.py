"""Tokenizer invariants: round trips, special ids, OOV handling, save/load identity, chunked
encoding, and the Penn Treebank word vocabulary.

Every tokenizer here is trained inside the tests on a small generated corpus, so the suite
needs no data files; only the PTB test uses ../shared/data and skips without it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    WordTokenizer,
    load_tokenizer,
    train_options,
    train_tokenizer,
)

PROPERTY = settings(max_examples=100, deadline=None)
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "I",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "no",
    "what",
    "up",
    "out",
    "more",
    "said",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "café",
    "naïve",
    "über",
    "straße",
    "Ωmega",
    "東京",
    "日本語",
    "smile🙂",
    "don't",
    "co-op",
    "3.14",
    "2024",
    "$5",
    "(parens)",
    "[x]",
]
SP_VOCAB = 400


def shared_data() -> Path:
    """The shared data directory next to the repository (absent on machines without it)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def make_corpus(lines: int = 1200, seed: int = 0) -> str:
    """Deterministic text with the awkward parts real corpora have: repeated and leading
    spaces, tabs, blank lines, CRLF, digits, punctuation and non-ASCII characters."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        words = rng.choices(WORDS, k=rng.randint(0, 14))
        line = " ".join(words)
        if i % 17 == 0:
            line = "  " + line
        if i % 23 == 0:
            line = line.replace(" ", "\t", 1)
        if i % 31 == 0:
            line += "\r"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_corpus()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained(corpus: Path) -> dict[str, Tokenizer]:
    """One tokenizer per kind, trained once for the whole session."""
    return {
        "char": train_tokenizer("char", [corpus]),
        "char_unk": train_tokenizer("char", [corpus], unk_policy="unk"),
        "word": train_tokenizer("word", [corpus]),
        "bpe": train_tokenizer("bpe", [corpus], SP_VOCAB),
        "unigram": train_tokenizer("unigram", [corpus], SP_VOCAB),
    }


@pytest.fixture(scope="session")
def saved(
    trained: dict[str, Tokenizer], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saved")
    dirs = {}
    for name, tok in trained.items():
        tok.save(root / name)
        dirs[name] = root / name
    return dirs


EXACT_KINDS = ["char", "bpe", "unigram"]
ALL_KINDS = ["char", "char_unk", "word", "bpe", "unigram"]
TRICKY = [
    "",
    " ",
    "\n",
    "  leading spaces",
    "trailing spaces  ",
    "a\n\n\nb\n",
    "tab\tand\r\nCRLF\r\n",
    "\u2581",
    "x\u2581y \u2581 ",
    "<s> </s> <unk> <pad> <bos> <eos>",
    "\x00\x01\x7f",
    "e\u0301 ﬁ \u3000 \u200b",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂🙃 東京",
    "the café naïve",
]


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXACT_KINDS)
@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky_strings(trained: dict[str, Tokenizer], name: str, text: str) -> None:
    tok = trained[name]
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("name", EXACT_KINDS)
def test_round_trip_corpus(trained: dict[str, Tokenizer], corpus_text: str, name: str) -> None:
    tok = trained[name]
    assert tok.decode(tok.encode(corpus_text)) == corpus_text


@PROPERTY
@given(text=st.text())
@example(text="\u2581\u2581 \u2581\n")
def test_char_round_trip_any_unicode(trained: dict[str, Tokenizer], text: str) -> None:
    tok = trained["char"]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@PROPERTY
@given(text=st.text())
def test_bpe_round_trip_any_unicode(trained: dict[str, Tokenizer], text: str) -> None:
    tok = trained["bpe"]
    assert tok.decode(tok.encode(text)) == text


@PROPERTY
@given(text=st.text())
def test_unigram_round_trip_any_unicode(trained: dict[str, Tokenizer], text: str) -> None:
    tok = trained["unigram"]
    assert tok.decode(tok.encode(text)) == text


def corpus_like_text() -> st.SearchStrategy[str]:
    """Text drawn from the corpus alphabet, so the learned pieces (not bytes) do the work."""
    alphabet = sorted(set(make_corpus()))
    return st.text(alphabet=st.sampled_from(alphabet), max_size=300)


@pytest.mark.parametrize("name", ["bpe", "unigram"])
@PROPERTY
@given(text=corpus_like_text() | st.text())
def test_sentencepiece_ids_equal_direct_call(
    trained: dict[str, Tokenizer], name: str, text: str
) -> None:
    """Line-by-line batch encoding is an optimisation only: the ids are sentencepiece's own."""
    tok = trained[name]
    assert isinstance(tok, SentencePieceTokenizer)
    if "\u2581" in text:
        text = text.replace("\u2581", "_")
    assert tok.encode(text) == tok.processor.encode(text)


@PROPERTY
@given(text=corpus_like_text())
def test_sentencepiece_round_trip_corpus_alphabet(trained: dict[str, Tokenizer], text: str) -> None:
    for name in ("bpe", "unigram"):
        tok = trained[name]
        assert tok.decode(tok.encode(text)) == text


def test_sentencepiece_learns_subwords(trained: dict[str, Tokenizer]) -> None:
    """Pieces are real merges, not characters: common words take fewer ids than letters."""
    for name in ("bpe", "unigram"):
        tok = trained[name]
        assert tok.vocab_size == SP_VOCAB
        assert len(tok.encode(" the and that")) < len(" the and that")


def test_sentencepiece_newline_is_one_piece(trained: dict[str, Tokenizer]) -> None:
    for name in ("bpe", "unigram"):
        tok = trained[name]
        ids = tok.encode("\n")
        assert len(ids) == 1 and ids[0] > EOS_ID


# --- special ids and unknowns ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL_KINDS)
def test_special_id_layout(trained: dict[str, Tokenizer], name: str) -> None:
    tok = trained[name]
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tok.decode([PAD_ID, BOS_ID]) == ""
    assert tok.kind in ("char", "word", "bpe", "unigram")


@pytest.mark.parametrize("name", ALL_KINDS)
def test_encode_adds_no_specials(trained: dict[str, Tokenizer], name: str) -> None:
    ids = trained[name].encode("the of and")
    assert PAD_ID not in ids and BOS_ID not in ids and EOS_ID not in ids


def test_char_byte_fallback_layout(trained: dict[str, Tokenizer]) -> None:
    tok = trained["char"]
    assert isinstance(tok, CharTokenizer)
    assert tok.vocab_size == 4 + 256 + len(tok.chars)
    # "é" may be known, "☃" is not: it becomes its three UTF-8 bytes.
    assert tok.encode("☃") == [4 + b for b in "☃".encode()]
    assert UNK_ID not in tok.encode("☃ \U0010ffff")


@PROPERTY
@given(text=st.text())
def test_char_unk_policy_one_id_per_character(trained: dict[str, Tokenizer], text: str) -> None:
    tok = trained["char_unk"]
    assert isinstance(tok, CharTokenizer)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    known = set(tok.chars)
    assert [i == UNK_ID for i in ids] == [c not in known for c in text]


def test_char_unk_policy_decodes_unknown_as_replacement(trained: dict[str, Tokenizer]) -> None:
    tok = trained["char_unk"]
    assert tok.vocab_size == 4 + len(tok.chars)  # no byte tokens
    assert tok.encode("☃") == [UNK_ID]
    assert tok.decode(tok.encode("the☃")) == "the\ufffd"


def test_char_vocabulary_ranked_by_frequency(corpus_text: str, corpus: Path) -> None:
    tok = train_tokenizer("char", [corpus], 4 + 256 + 5)
    assert isinstance(tok, CharTokenizer)
    assert len(tok.chars) == 5
    assert tok.chars[0] == " "  # the most frequent character gets the first id after bytes
    assert tok.decode(tok.encode(corpus_text)) == corpus_text  # the rest via bytes


def test_word_oov_maps_to_unk(trained: dict[str, Tokenizer]) -> None:
    tok = trained["word"]
    ids = tok.encode("the zzzunseen of qqq\n")
    assert ids[1] == UNK_ID and ids[3] == UNK_ID
    assert ids[0] != UNK_ID and ids[2] != UNK_ID
    assert ids[-1] == EOS_ID
    assert tok.decode(ids) == "the <unk> of <unk>\n"


def test_word_literal_specials_are_the_special_ids(trained: dict[str, Tokenizer]) -> None:
    tok = trained["word"]
    assert tok.encode("<unk> <eos> <pad> <bos>") == [UNK_ID, EOS_ID, PAD_ID, BOS_ID]


@PROPERTY
@given(lines=st.lists(st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join), max_size=6))
def test_word_round_trip_normalised_text(trained: dict[str, Tokenizer], lines: list[str]) -> None:
    """Text that is already in the tokenizer's canonical form (words of the vocabulary,
    single spaces, one line per <eos>) comes back exactly."""
    tok = trained["word"]
    text = "".join(line + "\n" for line in lines)
    ids = tok.encode(text)
    assert ids.count(EOS_ID) == len(lines)
    assert tok.decode(ids) == text


def test_word_vocabulary_frequency_order_and_caps(corpus: Path) -> None:
    full = train_tokenizer("word", [corpus])
    assert isinstance(full, WordTokenizer)
    capped = train_tokenizer("word", [corpus], 4 + 10)
    assert isinstance(capped, WordTokenizer)
    assert capped.vocab_size == 14
    assert capped.words == full.words[:10]
    assert train_tokenizer("word", [corpus], max_size=14).words == capped.words
    rare = train_tokenizer("word", [corpus], min_freq=10**6)
    assert rare.vocab_size == 4


def test_word_options(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("Hello, World! hello world.\nHELLO again\n", encoding="utf-8")
    lower = train_tokenizer("word", [path], lowercase=True, split_regex=r"\w+|[^\w\s]")
    assert isinstance(lower, WordTokenizer)
    assert set(lower.words) == {"hello", "world", ",", "!", ".", "again"}
    assert lower.words[0] == "hello"  # 3 occurrences
    assert lower.decode(lower.encode("HeLLo, world!\n")) == "hello , world !\n"
    flat = train_tokenizer("word", [path], eos_at_newline=False)
    assert EOS_ID not in flat.encode("HELLO\nagain\n")
    assert flat.decode(flat.encode("HELLO\nagain\n")) == "HELLO again"


@pytest.mark.parametrize("name", ALL_KINDS)
def test_lone_surrogates_do_not_crash(trained: dict[str, Tokenizer], name: str) -> None:
    """Not Unicode text, but a str can hold them: they come back as U+FFFD, never an error."""
    tok = trained[name]
    decoded = tok.decode(tok.encode("the \ud800 of"))
    assert "\ufffd" in decoded or "<unk>" in decoded


def test_decode_accepts_any_int_sequence(trained: dict[str, Tokenizer]) -> None:
    np = pytest.importorskip("numpy")
    for tok in trained.values():
        ids = tok.encode("the of\n")
        assert tok.decode(np.array(ids)) == tok.decode(tuple(ids)) == tok.decode(ids)


def test_decode_rejects_out_of_range_ids(trained: dict[str, Tokenizer]) -> None:
    for tok in trained.values():
        with pytest.raises(TokenizerError, match="out of range"):
            tok.decode([tok.vocab_size])
        with pytest.raises(TokenizerError, match="out of range"):
            tok.decode([-1])


# --- save / load ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_KINDS)
def test_save_load_identity(
    trained: dict[str, Tokenizer], saved: dict[str, Path], corpus_text: str, name: str
) -> None:
    tok = trained[name]
    loaded = load_tokenizer(saved[name])
    assert type(loaded) is type(tok)
    assert loaded.kind == tok.kind
    assert loaded.vocab_size == tok.vocab_size
    for text in [corpus_text, *TRICKY]:
        assert loaded.encode(text) == tok.encode(text)
    ids = tok.encode(corpus_text)
    assert loaded.decode(ids) == tok.decode(ids)
    assert (saved[name] / "tokenizer.json").is_file()
    assert (saved[name] / "tokenizer.model").is_file() == (name in ("bpe", "unigram"))


def test_load_through_registry_and_subclass(saved: dict[str, Path]) -> None:
    assert isinstance(load_tokenizer(saved["word"]), WordTokenizer)
    assert isinstance(CharTokenizer.load(saved["char"]), CharTokenizer)
    with pytest.raises(TokenizerError, match="kind is 'word', expected 'char'"):
        CharTokenizer.load(saved["word"])


def test_retraining_is_deterministic(
    corpus: Path, trained: dict[str, Tokenizer], corpus_text: str
) -> None:
    for name in ("word", "bpe"):
        again = train_tokenizer(name, [corpus], trained[name].vocab_size)
        assert again.encode(corpus_text) == trained[name].encode(corpus_text)


# --- chunked input -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_KINDS)
def test_encode_file_equals_encode(
    trained: dict[str, Tokenizer], corpus: Path, corpus_text: str, name: str
) -> None:
    tok = trained[name]
    chunks = list(tok.encode_file(corpus, chunk_bytes=300))
    assert len(chunks) > 10
    assert [i for chunk in chunks for i in chunk] == tok.encode(corpus_text)


def test_training_does_not_depend_on_chunk_size(corpus: Path, corpus_text: str) -> None:
    for kind in ("char", "word", "bpe"):
        small = train_tokenizer(
            kind, [corpus], SP_VOCAB if kind == "bpe" else None, chunk_bytes=100
        )
        large = train_tokenizer(kind, [corpus], SP_VOCAB if kind == "bpe" else None)
        assert small.encode(corpus_text) == large.encode(corpus_text)


def test_several_inputs_and_single_path(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha beta\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("gamma beta\n", encoding="utf-8")
    tok = train_tokenizer("word", [tmp_path / "a.txt", tmp_path / "b.txt"])
    assert isinstance(tok, WordTokenizer)
    assert tok.words == ("beta", "alpha", "gamma")
    single = train_tokenizer("word", str(tmp_path / "a.txt"))
    assert single.vocab_size == 4 + 2


def test_sentencepiece_long_lines_are_not_dropped(tmp_path: Path) -> None:
    """sentencepiece skips lines over max_sentence_length; we cut them instead."""
    path = tmp_path / "long.txt"
    path.write_text(" ".join(["lorem ipsum dolor sit amet"] * 2000), encoding="utf-8")
    tok = train_tokenizer("bpe", [path], 300, max_sentence_length=1024)
    text = "lorem ipsum dolor"
    assert len(tok.encode(text)) < 8
    assert tok.decode(tok.encode(text)) == text


def test_train_options_lists_each_kinds_settings() -> None:
    assert set(train_options("char")) == {"unk_policy", "chunk_bytes"}
    assert {"min_freq", "max_size", "lowercase", "split_regex", "eos_at_newline"} <= set(
        train_options("word")
    )
    assert {"character_coverage", "model_type", "input_sentence_size"} <= set(train_options("bpe"))


def test_none_options_take_defaults(corpus: Path) -> None:
    tok = train_tokenizer("char", [corpus], None, unk_policy=None)
    assert isinstance(tok, CharTokenizer) and tok.unk_policy == "byte_fallback"


# --- Penn Treebank --------------------------------------------------------------------------


def test_ptb_word_vocabulary() -> None:
    """The standard PTB vocabulary: 10,000 entries = 9,999 word types (the corpus's own
    ``<unk>`` among them, mapped to our ``<unk>`` id) + ``<eos>``; ``<pad>`` and ``<bos>``
    come on top, so vocab_size is 10,002."""
    path = shared_data() / "ptb" / "ptb.train.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    tok = train_tokenizer("word", [path], eos_at_newline=True)
    assert isinstance(tok, WordTokenizer)
    assert tok.vocab_size == 10_002
    assert len(tok.words) == 9_998
    assert "<unk>" not in tok.words
    entries = {"<unk>", "<eos>", *tok.words}
    assert len(entries) == 10_000
    assert tok.encode("<unk>") == [UNK_ID]
    assert tok.encode(" pierre <unk> N years old \n") == [
        tok.encode("pierre")[0],
        UNK_ID,
        tok.encode("N")[0],
        tok.encode("years")[0],
        tok.encode("old")[0],
        EOS_ID,
    ]
    text = path.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert ids.count(EOS_ID) == text.count("\n")
    assert ids.count(UNK_ID) == text.split().count("<unk>")
    assert tok.words[0] == "the"
