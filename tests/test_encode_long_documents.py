"""A document longer than the bound is encoded in chunks cut where no id changes, and its memory stays bounded:
sentencepiece holds about 226 bytes a token while it encodes, so one 2 GB single-line document needed about
100 GB in one worker. The text is this repository's README and notes (code blocks: runs of spaces, blank
lines) with some non-ASCII lines for the byte fallback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from ngpt_ds.data import encode
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.tokenizer import train_tokenizer, training_lines

REPO = Path(__file__).parents[1]
UNICODE = "Überprüfung naïve café — “quoted” 東京の天気は晴れ 🙂 αβγ\n\tindented\tand tabbed line\n"
TEXT = (REPO / "README.md").read_text(encoding="utf-8") + UNICODE + (REPO / "docs" / "ngpt_notes.md").read_text()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tokenizers trained as `launch/prepare_data.py` trains them, BPE and unigram, on TEXT."""
    folder = tmp_path_factory.mktemp("tokenizers")
    return {
        kind: train_tokenizer(
            training_lines([TEXT], 10**6), folder / f"{kind}.model", vocab_size=1000, model_type=kind
        ).path
        for kind in ("bpe", "unigram")
    }


def _cuts(text: str, max_chars: int, rules: encode.CutRules) -> list[tuple[int, str]]:
    """(position, kind) of each cut `encode.chunks` makes, checking that its chunks are the text in order."""
    pos, cuts = 0, []
    for chunk, cut in encode.chunks(text, max_chars, rules):
        if cut:
            cuts.append((pos, cut))
            if cut == "space":  # dropped: the next chunk's dummy prefix stands for it
                assert text[pos] == " "
                pos += 1
        assert 0 < len(chunk) <= max_chars and text[pos : pos + len(chunk)] == chunk
        assert cut != "newline" or chunk[0] == "\n"
        pos += len(chunk)
    assert pos == len(text)
    return cuts


# A unigram model's whole-document ids depend on float32 sums over everything before a word (module docstring
# of ngpt_ds.data.encode); over 6,000 characters (about 2,000 tokens) no near-tie flips, and the ids are equal.
@pytest.mark.parametrize("kind,chars", [("bpe", len(TEXT)), ("unigram", 6000)], ids=["bpe", "unigram"])
def test_chunked_ids_equal_the_whole_documents_at_every_cut(models, kind, chars):
    encode._init_worker(str(models[kind]))
    rules, text = encode._rules, TEXT[:chars]
    assert rules == encode.CutRules(drop_space=True, newline_lead=[encode._sp.piece_to_id("▁")])
    docs = ["a short one", text, "x", text[:5000], ""]
    whole, whole_lengths = encode.encode_documents(docs, max_chars=10**9)
    assert [len(encode._sp.encode(d)) + 1 for d in docs] == whole_lengths.tolist()
    # Above the longest run without a space or newline, so that no cut is a hard one.
    smallest = max(97, 2 + max(len(w) for w in re.split(r"[ \n]", text)))
    # A newline is cut at only where it is the chunk's last whitespace, so which cuts fall on one depends on
    # where the README's lines fall: 40 chunk sizes in a row, not one, keep the count from hanging on its prose.
    sizes = range(smallest, smallest + 40)
    newline_cuts = 0
    for max_chars in (*sizes, 300, 1000, 4096):
        ids, lengths = encode.encode_documents(docs, max_chars=max_chars)
        assert lengths.tolist() == whole_lengths.tolist() and np.array_equal(ids, whole), max_chars
        newline_cuts += [k for _, k in _cuts(text, max_chars, rules)].count("newline") if max_chars in sizes else 0
    cuts = _cuts(text, smallest, rules)
    kinds = [k for _, k in cuts]
    in_runs = sum(text[p - 1] == " " or text[p + 1] == " " for p, k in cuts if k == "space")
    assert len(cuts) >= len(text) // smallest and "hard" not in kinds
    assert newline_cuts >= chars // 4000 and kinds.count("space") >= chars // 200, (newline_cuts, kinds)
    assert in_runs > 20 or kind == "unigram", in_runs  # the README's code blocks (its first 6,000 characters have none)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_cuts_at_a_space_at_either_end_of_a_run_or_at_a_newline(models, kind):
    encode._init_worker(str(models[kind]))
    sp, rules = encode._sp, encode._rules
    for text in ("ab   cd", "ab \ncd", "ab\n\ncd", "a\n  b", " a b ", "\n\nab\n", "ab  ", "  ab", "a  \n\n  b c\n d"):
        whole, exact_cuts = sp.encode(text), 0
        for max_chars in range(1, len(text)):
            pieces = list(encode.chunks(text, max_chars, rules))
            got = [i for c, cut in pieces for i in sp.encode(c)[len(rules.newline_lead) if cut == "newline" else 0 :]]
            kinds = [kind for _, kind in _cuts(text, max_chars, rules)]
            assert got == whole or "hard" in kinds, (text, max_chars, pieces)
            exact_cuts += len(kinds) if "hard" not in kinds else 0
        assert exact_cuts >= 1, text


def test_a_chunk_without_whitespace_is_cut_hard_at_the_bound(models):
    encode._init_worker(str(models["bpe"]))
    text = "x" * 250 + " tail"
    assert [cut for _, cut in encode.chunks(text, 100, encode._rules)] == ["", "hard", "hard"]
    assert [c for c, _ in encode.chunks(text, 100, encode._rules)] == ["x" * 100, "x" * 100, "x" * 50 + " tail"]
    ids, lengths = encode.encode_documents([text], max_chars=100)
    assert lengths[0] == ids.size and ids[-1] == encode._sp.eos_id()


def test_cut_rules_of_models_trained_otherwise(models, tmp_path):
    """A model that collapses spaces or has no dummy prefix gets no newline cuts, and one without the dummy
    prefix keeps a cut space at the next chunk's start."""
    lines = list(training_lines([TEXT], 10**6))
    for extra, rules in (
        ({"remove_extra_whitespaces": True}, encode.CutRules(drop_space=True, newline_lead=None)),
        ({"add_dummy_prefix": False}, encode.CutRules(drop_space=False, newline_lead=None)),
    ):
        path = tmp_path / "other.model"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=str(tmp_path / "other"), vocab_size=600, byte_fallback=True,
            normalization_rule_name="identity", minloglevel=2, num_threads=1, **extra,
        )  # fmt: skip
        assert encode.cut_rules(spm.SentencePieceProcessor(model_file=str(path))) == rules, extra


def test_a_model_whose_newline_is_unknown_gets_no_newline_cuts(tmp_path):
    """Fault: a --tokenizer without byte fallback, identity-normalized and keeping spaces, passed the newline
    check though "\n" is <unk> there, and sentencepiece merges adjacent unknowns into one <unk>: cut between
    two newlines, "x \n\n\n\n y" gave [.., 0, 0, ..] where the whole document gives [.., 0, ..]. Such a
    model is now cut at spaces only, where a known "▁" keeps unknowns apart: the ids are the whole's."""
    lines = [line for line in TEXT.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp_path / "nobf"), vocab_size=600, byte_fallback=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2, num_threads=1,
    )  # fmt: skip
    encode._init_worker(str(tmp_path / "nobf.model"))
    sp, text = encode._sp, "x \n\n\n\n y"
    assert sp is not None and sp.unk_id() in sp.encode("\n")
    assert encode._rules == encode.CutRules(drop_space=True, newline_lead=None)
    for max_chars in range(4, len(text)):
        assert {cut for _, cut in encode.chunks(text, max_chars, encode._rules)} == {"", "space"}
        ids, lengths = encode.encode_documents([text], max_chars)
        assert ids.tolist() == [*sp.encode(text), sp.eos_id()], max_chars


def test_workers_receive_the_bound(models):
    batches = [(k, ["a short one", TEXT[k * 3000 :]]) for k in range(3)]
    one = list(encode.encode_in_order(batches, str(models["bpe"]), 1, max_chars=211))
    two = list(encode.encode_in_order(batches, str(models["bpe"]), 2, max_chars=211))
    assert [t for t, _, _ in two] == [0, 1, 2]
    for (_, ids1, len1), (_, ids2, len2) in zip(one, two):
        assert np.array_equal(ids1, ids2) and np.array_equal(len1, len2)


MEASURE = """
import resource, sys
from pathlib import Path
from ngpt_ds.data import encode
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
model, chars, bound = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
encode._init_worker(model)
line = Path(sys.argv[4]).read_text(encoding="utf-8").replace("\\n", " ")
text = (line * (chars // len(line) + 1))[:chars]  # one single-line document
encode.encode_documents([text[:100_000]], max_chars=bound)  # sentencepiece's and numpy's own start-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids, lengths = encode.encode_documents([text], max_chars=bound)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(ids.size, (after - before) * 1024 / len(text))
"""


def test_peak_memory_of_a_long_document_is_bounded_by_its_chunks(models, tmp_path):
    """Encoded whole, a 2,000,000-character single-line document raised the worker's peak RSS by about 42 bytes
    a character (the ids as Python ints, and sentencepiece's ~226 bytes a token); in 64 KiB chunks the growth
    is the ids array (4 bytes a token, twice while concatenated) and one chunk's working set."""
    source = tmp_path / "text.txt"
    source.write_text(TEXT, encoding="utf-8")
    cmd = [sys.executable, "-c", MEASURE, str(models["bpe"]), "2000000", str(1 << 16), str(source)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout.split()
    tokens, growth_per_char = int(out[0]), float(out[1])
    assert 400_000 < tokens < 1_000_000, tokens
    assert growth_per_char < 8.0, f"peak RSS grew {growth_per_char:.1f} bytes a character"


def test_the_text_has_what_the_cuts_are_tested_on():
    assert len(re.findall(r"  +", TEXT)) > 100 and len(re.findall(r"\n\n+", TEXT)) > 100


def test_prepare_writes_the_ids_of_the_whole_document_for_one_over_the_default_bound(models, tmp_path):
    """Through launch/prepare_data.py's own path (default bound, MAX_DOC_CHARS): a document of 1.3 M characters
    is encoded in two chunks and the shard holds the ids of the whole document."""
    line = TEXT.replace("\n", " ")
    long_doc = (line * (1_300_000 // len(line) + 1))[:1_300_000]
    docs = ["first document", long_doc, "last document"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    out = prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=tmp_path / "ds", tokenizer=models["bpe"], val_fraction=0, workers=1,
            progress=False,
        )
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(models["bpe"]))
    expected = [i for d in docs for i in sp.encode(d) + [sp.eos_id()]]
    assert len(list(encode.chunks(long_doc, encode.MAX_DOC_CHARS, encode.cut_rules(sp)))) == 2
    assert np.array_equal(np.fromfile(out / "train_000000.bin", dtype=np.uint16), expected)
