"""Fault: training an nGPT whose scaling vectors were converted to 16 bits (model.to(torch.bfloat16), .half()) is
refused (training_guards._check_scales_train), but the check looked at s_z alone. Fine-tuning only the last block,
the usual way to adapt a model cheaply (`model.requires_grad_(False); model.model.blocks[-1].requires_grad_(True)`),
froze s_z, so the check let it through, and the block's 16-bit alphas, s_qk, s_u and s_v lost every step: 10 AdamW
steps at lr 1e-4 moved 0 of the 32 values of its attention alpha, without a word (the causal LM and AutoModel's
base model alike). Now any scaling vector that trains in 16 bits is refused, with the same message."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

IDS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))


def _last_block_trainable(folder, kind: str, dtype: torch.dtype | None):
    from transformers import AutoModel, AutoModelForCausalLM

    import ngpt_ds  # noqa: F401  (registers both families)

    model = {"causal": AutoModelForCausalLM, "base": AutoModel}[kind].from_pretrained(folder)
    if dtype is not None:
        model = model.to(dtype)
    model.requires_grad_(False)
    model.model.blocks[-1].requires_grad_(True)
    return model.train()


def _loss(model, kind: str) -> torch.Tensor:
    if kind == "causal":
        return model(IDS, labels=IDS).loss
    return model(IDS).last_hidden_state.float().pow(3).mean()


@pytest.mark.parametrize("kind", ["causal", "base"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_block_fine_tuned_alone_is_refused_naming_its_scaling_vectors(hf_saved, kind, dtype):
    from ngpt_ds.errors import NgptConfigError

    model = _last_block_trainable(hf_saved["ngpt"], kind, dtype)
    with pytest.raises(NgptConfigError) as refused:  # old code: no error, and no scaling vector moved
        _loss(model, kind)
    name = {"causal": "NGPTForCausalLM", "base": "NGPTModel"}[kind]
    assert str(refused.value).startswith(
        f"{name}'s scaling vectors (alpha, s_qk, s_u, s_v, s_z) are {str(dtype).removeprefix('torch.')}: an optimizer "
        "step smaller than half their spacing"
    )
    model.requires_grad_(False)  # all frozen: nothing to lose, it runs
    with torch.no_grad():
        _loss(model, kind)


@pytest.mark.parametrize("kind", ["causal", "base"])
def test_a_block_fine_tuned_alone_from_a_bfloat16_load_trains_its_scaling_vectors(hf_saved, kind):
    """from_pretrained(dtype=torch.bfloat16) keeps them in float32: the same partial fine-tune is taken, and moves
    every value of the block's attention alpha."""
    from transformers import AutoModel, AutoModelForCausalLM

    model = {"causal": AutoModelForCausalLM, "base": AutoModel}[kind].from_pretrained(
        hf_saved["ngpt"], dtype=torch.bfloat16
    )
    model.requires_grad_(False)
    model.model.blocks[-1].requires_grad_(True)
    model.train()
    alpha = model.model.blocks[-1].attn_alpha.param
    before = alpha.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(3):
        _loss(model, kind).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert alpha.dtype == torch.float32
    assert int((alpha != before).sum()) == alpha.numel() == 32
