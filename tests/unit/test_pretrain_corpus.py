"""Corpus listing and streaming (text file, directory of .txt/.jsonl/.csv), holdout, hashing, vocabulary."""
from __future__ import annotations

import hashlib
import json

import pytest

from train.pretrain.corpus import CorpusError, corpus_hash, is_held_out, iter_texts, list_corpus_files
from train.pretrain.scan import held_out_texts, scan_corpus, training_texts


def _corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first line\n\n  second line  \n")
    (root / "sub" / "b.jsonl").write_text(json.dumps({"text": "from jsonl", "id": 1}) + "\n\n"
                                          + json.dumps({"text": "more jsonl"}) + "\n")
    (root / "c.csv").write_bytes(b'text,label\r\n"quoted\r\nnewline",0\r\nplain,1\r\n')
    (root / "notes.md").write_text("ignored")
    return root


def test_directory_streams_every_supported_file_in_order(tmp_path):
    files = list_corpus_files(str(_corpus_dir(tmp_path)))
    assert [f.uri.rsplit("/", 1)[-1] for f in files] == ["a.txt", "c.csv", "b.jsonl"]
    assert list(iter_texts(files)) == ["first line", "second line", "quoted\r\nnewline", "plain",
                                       "from jsonl", "more jsonl"]


def test_iter_texts_is_a_stream_not_a_list(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)))
    texts = iter_texts(list_corpus_files(str(path)))
    assert next(texts) == "line 0" and next(texts) == "line 1"  # a generator: nothing read ahead wholesale


def _unusable(tmp_path, kind: str):
    if kind == "missing":
        return tmp_path / "missing.txt"
    if kind == "empty":
        (tmp_path / "empty.txt").write_text("")
        return tmp_path / "empty.txt"
    if kind == "no text files":
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "x.md").write_text("x")
        return tmp_path / "d"
    (tmp_path / "x.parquet").write_text("x")
    return tmp_path / "x.parquet"


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("no text files", "holds no .txt/.jsonl/.csv files"),
    ("unsupported", "unsupported file type '.parquet'"),
])
def test_unusable_corpus_is_a_clear_error(tmp_path, kind, message):
    with pytest.raises(CorpusError, match=message):
        list_corpus_files(str(_unusable(tmp_path, kind)))


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    with pytest.raises(CorpusError, match="c.jsonl line 2: a JSON object with a string 'text' field"):
        list(iter_texts(list_corpus_files(str(path))))


def test_corpus_hash_covers_names_and_bytes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello\n")
    before = corpus_hash(list_corpus_files(str(path)))
    assert before == hashlib.sha256(b"a.txt\0hello\n").hexdigest()
    path.write_text("hello!\n")
    assert corpus_hash(list_corpus_files(str(path))) != before


def test_holdout_splits_texts_by_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("".join(f"text number {i}\n" for i in range(1000)))
    files = list_corpus_files(str(path))
    train, held = list(training_texts(files, None, 10, None)), list(held_out_texts(files, None, 10, None))
    assert len(train) + len(held) == 1000 and not set(train) & set(held)
    assert 60 <= len(held) <= 140  # about 1 in 10
    assert all(is_held_out(t, 10) for t in held)


def test_scan_trains_a_wordpiece_vocabulary_and_counts(tmp_path):
    from train.pretrain.vocab import tokenizer_from_files

    path = tmp_path / "a.txt"
    path.write_text("".join(f"the market rose {i} points while bonds fell\n" for i in range(300)))
    files = list_corpus_files(str(path))
    scan = scan_corpus(files, None, holdout_every=10, tokenizer="train", vocab_size=200, init_dir=None,
                       reuse_tokenizer=None, endpoint_url=None)
    tokenizer = tokenizer_from_files(scan["tokenizer_files"])
    assert scan["vocab_size"] == len(tokenizer) <= 200 and scan["corpus_hash"] == corpus_hash(files)
    assert scan["texts"] + scan["held_out_texts"] == 300
    ids = tokenizer("The market rose")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["the", "market", "rose"]


def test_scan_refuses_a_corpus_without_text(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n \n")
    with pytest.raises(CorpusError, match="no non-blank text"):
        scan_corpus(list_corpus_files(str(path)), None, holdout_every=10, tokenizer="minilm", vocab_size=None,
                    init_dir=None, reuse_tokenizer=None, endpoint_url=None)
