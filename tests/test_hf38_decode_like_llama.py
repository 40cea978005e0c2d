"""The exported tokenizer's decode against a Llama sentencepiece tokenizer's on the same ids (ngpt_ds/hf/tokenizer.py).

Not a fault: checked because lm-eval's `hf` model drops the space before the first generated word (it decodes the
generated ids alone; tests/test_hf37_lm_eval_hf_model.py). transformers' LlamaTokenizer, made from the same
sentencepiece model by from_pretrained, decodes every id sequence tried here as the exported tokenizer does, and both
as sentencepiece itself: all three drop the dummy-prefix space of the first piece ("▁The" alone is "The"). So a Llama
gives lm-eval's `hf` model the same text without the space; the export's decoder (Replace, ByteFallback, Fuse, Strip of
one leading space) is Llama's own. Llama and the export differ from sentencepiece alone on ids that start inside a
character written as byte pieces (asserted below)."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

TEXTS = [
    "Hello world, the class statement",
    "The quick brown fox.\n\nIt jumps",
    " leading space and  two spaces\ttab",
    "ünïcödé 日本語 😀 12.5e-3",
    "def f(x):\n    return x</s>",
]


def test_every_suffix_decodes_as_a_llama_tokenizer_and_sentencepiece_decode_it(tiny_dataset, tmp_path):
    from transformers import AutoTokenizer, LlamaTokenizer

    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.hf.tokenizer import build_hf_tokenizer

    model = tiny_dataset / "tokenizer.model"
    shutil.copy(model, tmp_path / "tokenizer.model")
    llama = LlamaTokenizer.from_pretrained(str(tmp_path))  # transformers' conversion of the sentencepiece model
    sp, ours = Tokenizer.load(model), build_hf_tokenizer(model)
    assert type(llama) is LlamaTokenizer and len(llama) == len(ours) == 512
    ours.save_pretrained(tmp_path / "export")
    exported = AutoTokenizer.from_pretrained(str(tmp_path / "export"))  # what lm-eval's hf model loads
    eos = sp.eos_id
    checked, mid_character = 0, []
    for text in TEXTS:
        ids = sp.encode(text)
        assert ours.encode(text, add_special_tokens=False) == ids
        for ending in ([], [eos]):  # a generation that stopped at </s>: lm-eval decodes skipping special tokens
            for cut in range(len(ids)):
                suffix = ids[cut:] + ending
                decoded = {t.decode(suffix, skip_special_tokens=True) for t in (ours, exported, llama)}
                assert len(decoded) == 1, (text, cut, decoded)  # the export's decode is Llama's, id for id
                if decoded != {sp.decode(ids[cut:])}:
                    mid_character.append((llama.convert_ids_to_tokens(ids[cut]), sp.decode(ids[cut:]), *decoded))
                checked += 1
    assert checked == 2 * sum(len(sp.encode(t)) for t in TEXTS) == 230
    # Where sentencepiece differs (both Llama and the export): a suffix that starts inside a character written as
    # byte pieces (a UTF-8 continuation byte first); sentencepiece replaces the orphaned bytes, tokenizers'
    # ByteFallback the whole byte run, one U+FFFD a byte.
    assert mid_character == 2 * [
        ("<0x97>", "\ufffd\ufffd本語 😀 12.5e-3", "\ufffd" * 8 + " 😀 12.5e-3"),
        ("<0xA5>", "\ufffd本語 😀 12.5e-3", "\ufffd" * 7 + " 😀 12.5e-3"),
        ("<0x9C>", "\ufffd\ufffd語 😀 12.5e-3", "\ufffd" * 5 + " 😀 12.5e-3"),
        ("<0xAC>", "\ufffd語 😀 12.5e-3", "\ufffd" * 4 + " 😀 12.5e-3"),
    ]
    # The space lm-eval's hf model drops: the first generated piece "▁jumps" decoded alone, by all three.
    full, context = sp.encode("It jumps"), sp.encode("It")
    assert full[: len(context)] == context
    jumps = full[len(context) :]  # what a model that was given "It" generates
    assert llama.convert_ids_to_tokens(jumps[0]).startswith("▁")
    assert ours.decode(jumps) == exported.decode(jumps) == llama.decode(jumps) == sp.decode(jumps) == "jumps"
    assert ours.decode(full) == "It jumps"
