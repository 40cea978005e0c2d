"""A tiny random nGPT exported by ngpt_ds.infer.export.export_model itself, with its checkpoint reading replaced
by the model: the fixture of the config-record tests of both export formats (native and hf)."""

from pathlib import Path

import pytest
import torch

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])


def export_random_ngpt(root: Path, tokenizer_model: Path, format: str) -> tuple[Path, torch.Tensor]:
    """Exports a seeded 2-layer nGPT (vocab 512, width 32, 2 heads, context 32) into root/<format> with the
    tokenizer at `tokenizer_model`; returns the export's folder and the model's logits on TOKENS, [8, 512]."""
    import ngpt_ds.infer.export as export
    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.infer import LoadedModel
    from ngpt_ds.model import ModelConfig, build_model

    source = root / "step_1"
    source.mkdir()
    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = build_model(config).eval().requires_grad_(False)
    tok = Tokenizer.load(tokenizer_model)
    loaded = LoadedModel(
        model=model, config=config, tokenizer=tok, tokenizer_sha256=tok.sha256, source=source, kind="checkpoint"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "resolve_checkpoint", lambda checkpoint: source)
        mp.setattr(export, "checkpoint_tokenizer", lambda *a: tok)
        mp.setattr(export, "load_checkpoint", lambda *a, **kw: loaded)
        folder = export.export_model(source, root / format, format=format)
    with torch.no_grad():
        logits = model(TOKENS)[0]
    return folder, logits
