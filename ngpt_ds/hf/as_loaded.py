"""A `--format hf` export read as ngpt_ds's LoadedModel, for the ngpt_ds lm-eval model (ngpt_ds.infer.lm_eval_adapter).

The weights go through this package's own model classes (MODELS[arch].from_pretrained, with every check that
from_pretrained makes: recorded config, shapes before allocating, unit norms), never through the folder's
configuration_ngpt.py / modeling_ngpt.py: a shared folder's Python files are not imported, so
trust_remote_code is not needed. The folder holds no sentencepiece .model (export.py --format hf converts it to
tokenizer.json), so the text goes through that tokenizer.json, which export.py checked gives the sentencepiece
model's ids (ngpt_ds.hf.tokenizer.check_same_tokens); `tokenizer=` may name the model's own .model instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.infer.export_config import CONFIG_FILE, HF_MODEL_TYPES, read_config_json
from ngpt_ds.infer.loading import LoadedModel, check_tokenizer, resolve_device, resolve_dtype

TOKENIZER_JSON = "tokenizer.json"


def is_hf_export(path: str | Path) -> bool:
    """Whether `path` is a folder whose config.json is a transformers config of an ngpt_ds family."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        values = read_config_json(config)
    except (OSError, ValueError):
        return False  # the native loader reads it again and names what is wrong
    return isinstance(values, dict) and "format" not in values and values.get("model_type") in HF_MODEL_TYPES


class HfTokenizer(Tokenizer):
    """An export's tokenizer.json behind ngpt_ds's Tokenizer interface (encode without BOS/EOS, decode, eos_id)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, path: Path, data: bytes):  # noqa: D107
        self._hf = tokenizer
        self.path = path
        self.model_bytes = data
        self.sha256 = hashlib.sha256(data).hexdigest()

    @property
    def vocab_size(self) -> int:
        return len(self._hf)

    @property
    def eos_id(self) -> int:
        eos = self._hf.eos_token_id
        return -1 if eos is None else int(eos)

    def encode(self, text: str) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        return str(self._hf.decode([int(i) for i in ids]))


def _tokenizer(folder: Path, override: str | Path | None) -> Tokenizer:
    if override is not None:
        return Tokenizer.load(override)
    path = folder / TOKENIZER_JSON
    if not path.is_file():
        raise NgptConfigError(
            f"{path} is missing or not a regular file: the export {folder} has no tokenizer (copied in part). Copy "
            "the whole folder again, or pass the model's own sentencepiece model as tokenizer=FILE.model"
        )
    try:
        # The class itself, not AutoTokenizer: tokenizer_config.json cannot name another class or code to run.
        hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001  tokenizers and transformers raise plain Exceptions on a bad file
        raise NgptConfigError(
            f"{path} cannot be read as a tokenizer ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "copy the whole folder again, or pass the model's own sentencepiece model as tokenizer=FILE.model"
        ) from None
    return HfTokenizer(hf, path, path.read_bytes())


def load_hf_export(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
) -> LoadedModel:
    """A `--format hf` export folder -> LoadedModel (eval mode, on `device`, in `dtype`)."""
    folder = Path(path)
    values: dict[str, Any] = read_config_json(folder / CONFIG_FILE)
    arch = next(a for a, c in CONFIGS.items() if c.model_type == values["model_type"])
    config = CONFIGS[arch].from_pretrained(str(folder))
    hf_model = MODELS[arch].from_pretrained(str(folder), config=config)
    model_config = config.to_model_config()
    assert model_config.vocab_size is not None  # a transformers config always has one
    tok = _tokenizer(folder, tokenizer)
    # A tokenizer=FILE.model is held to the sentencepiece model's sha256 the export recorded, as a native export's
    # or a checkpoint's is: another model of the same size was taken, and every score was of other text's ids.
    # The folder's own tokenizer.json is checked against its own recorded sha256 where config.json is read.
    marker = values.get("ngpt_ds_export")
    recorded = marker.get("tokenizer_sha256") if isinstance(marker, dict) else None
    expected = recorded if tokenizer is not None and isinstance(recorded, str) else None
    digest = check_tokenizer(tok, model_config.vocab_size, expected, f"the model in {folder}")
    model = hf_model.model.to(device=resolve_device(device), dtype=resolve_dtype(dtype)).eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        config=model_config,
        tokenizer=tok,
        tokenizer_sha256=digest,
        source=folder,
        kind="export",
        info=dict(values.get("ngpt_ds_export") or {}),
    )
