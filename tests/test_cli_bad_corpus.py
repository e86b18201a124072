"""Bad corpora give one clear line at `lmforge train` and `lmforge tokenizer train`, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm.cli import main

BAD = {
    "empty": (b"", "empty"),
    "latin1": ("caf\u00e9 cr\u00e8me\n".encode("latin-1"), "not valid UTF-8 at byte offset 3"),
    "binary": (bytes(range(256)) * 4, "not valid UTF-8 at byte offset 128"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_train_and_tokenizer_train_name_the_problem(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, message = BAD[kind]
    corpus = tmp_path / f"{kind}.txt"
    corpus.write_bytes(data)
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'[data]\ntrain = ["{corpus}"]\nvalid_fraction = 0.1\n[tokenizer]\nkind = "char"\n'
        f'[model]\nfamily = "rnn"\n[train]\nout_dir = "{tmp_path / "run"}"\nprogress = false\n'
    )
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(corpus) in err and message in err and "Traceback" not in err
    for tok_kind in ("char", "word", "bpe"):
        assert main(["tokenizer", "train", "--kind", tok_kind, "--input", str(corpus), "--vocab-size", "300",
                     "--out", str(tmp_path / "tok")]) == 2
        err = capsys.readouterr().err
        assert str(corpus) in err and message in err, err


def test_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["tokenizer", "train", "--kind", "char", "--input", str(tmp_path / "nope.txt"),
                 "--out", str(tmp_path / "t")]) == 2
    assert "nope.txt" in capsys.readouterr().err
