"""The token ids an `--format hf` folder's tokenizer files give, against the model's embedding: checked where the
folder's config.json is read (ngpt_ds.hf.configuration_ngpt), before transformers' tokenizer code reads the files.

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.saved_weights import TOKENIZER_FILES

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
"""The special tokens a tokenizer_config.json or special_tokens_map.json names (transformers' SPECIAL_TOKENS_ATTRIBUTES)."""


def _json(data: bytes | None) -> Any:
    try:
        return json.loads(data) if data else None
    except (ValueError, RecursionError):
        return None  # transformers' own reader names a file that is no JSON


def check_token_ids(folder: Path, texts: dict[str, bytes], vocab_size: int, fix: str, recorded: bool = False) -> None:
    """The token ids the tokenizer files of `folder` give (`texts`: name -> bytes) must be rows of the model's embedding
    (0 .. vocab_size - 1), and the special tokens they name tokens of the tokenizer: an added_tokens.json or an
    added_tokens_decoder giving id 512 to a model of 512, or an eos_token or pad_token naming a token the vocabulary
    lacks (which transformers adds as a new id, 512), loaded without a word, and the model then refused every text
    holding it, or every padded batch, at its forward, naming no file; the export writes no such entry. With
    `recorded` (tokenizer.json is the one the export recorded), its ids are the model's own: one past vocab_size means
    config.json's vocab_size was edited, which the weights' record names (ngpt_ds.hf.recorded_config)."""
    tok, config, special, added = (_json(texts.get(n)) for n in TOKENIZER_FILES[:4])
    known: set[str] = set()
    given: list[tuple[str, Any, Any]] = []  # (file, token, id)
    model = tok.get("model") if isinstance(tok, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        given += [("tokenizer.json", token, i) for token, i in vocab.items()]
    elif isinstance(vocab, list):  # Unigram: [token, score] by id
        known.update(str(entry[0]) for entry in vocab if isinstance(entry, list) and entry)
    for entry in (tok.get("added_tokens") if isinstance(tok, dict) else None) or []:
        if isinstance(entry, dict):
            given.append(("tokenizer.json", entry.get("content"), entry.get("id")))
    if isinstance(added, dict):
        given += [("added_tokens.json", token, i) for token, i in added.items()]
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    for i, entry in (decoder or {}).items() if isinstance(decoder, dict) else ():
        given.append(("tokenizer_config.json", entry.get("content") if isinstance(entry, dict) else None, i))
    for name, token, i in given:
        if recorded and name == "tokenizer.json":
            known.add(str(token))
            continue
        number = int(i) if isinstance(i, int) or (isinstance(i, str) and i.isdigit()) else None
        if number is None or isinstance(i, bool) or not 0 <= number < vocab_size:
            raise NgptConfigError(
                f"{folder / name}: token {token!r} has id {i!r}, but the model's embedding holds {vocab_size} ids "
                f"(0 to {vocab_size - 1}, vocab_size in config.json): texts holding it could not be read; {fix}"
            )
        known.add(str(token))
    if not known:
        return  # no vocabulary read: the names cannot be checked
    for name, found in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        for key in SPECIAL_TOKENS if isinstance(found, dict) else ():
            value = found.get(key)
            token = value.get("content") if isinstance(value, dict) else value
            if token is not None and str(token) not in known:
                raise NgptConfigError(
                    f"{folder / name}: {key} = {token!r} is no token of the tokenizer: transformers would add it with "
                    f"id {vocab_size} or above, past the model's embedding ({vocab_size} ids, vocab_size in "
                    f"config.json); {fix}"
                )
