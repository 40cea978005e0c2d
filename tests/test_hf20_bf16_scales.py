"""An nGPT loaded in 16 bits keeps its scaling vectors (alpha, s_qk, s_u, s_v, s_z) in float32, so fine-tuning
it trains them; one converted whole to 16 bits is refused for training, naming the fix."""

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

IDS = torch.randint(3, 512, (4, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=64, n_head=4, seq_len=64)
    path = tmp_path_factory.mktemp("hf20_bf16") / "model"
    MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config)).save_pretrained(path)
    return path


def _scales(model) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if name.endswith(".param")}


def test_a_bf16_loaded_ngpt_trains_its_scaling_vectors(folder):
    """Fault: from_pretrained(dtype=torch.bfloat16) made the scaling vectors bf16 too. Stored at their `scale`
    (1/sqrt(d), or 1 for s_u and s_v; PAPER section 2.5), they lost every AdamW step smaller than half the bf16
    spacing there (0.0039 at 1), so fine-tuning froze them without a word. Before: 0 of their 1920 values moved in
    10 AdamW steps at lr 1e-4 (all 1920 in float32). Now: they stay float32 (the matrices bf16) and all move."""
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    model = NGPTForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).train()
    scales = _scales(model)
    assert len(scales) == 11 and sum(p.numel() for p in scales.values()) == 1920
    assert {p.dtype for p in scales.values()} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if n not in scales} == {torch.bfloat16}
    before = {n: p.detach().clone() for n, p in scales.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    for _ in range(10):
        model(IDS, labels=IDS, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert sum(int((p != before[n]).sum()) for n, p in scales.items()) == 1920


def test_the_bf16_forward_is_the_fp32_one_to_bf16_rounding(folder):
    """The scaling vectors' effective values are rounded to bf16 once, in the forward, as the activations'
    arithmetic needs: the bf16 model's logits stay within 2 bf16 epsilons (2^-7 each) of the largest fp32 logit
    (2 layers), and its scaling vectors equal the fp32 model's exactly."""
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    fp32 = NGPTForCausalLM.from_pretrained(folder)
    bf16 = NGPTForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    for (name, p), q in zip(_scales(bf16).items(), _scales(fp32).values()):
        assert torch.equal(p, q), name
    with torch.no_grad():
        reference = fp32(IDS).logits
        logits = bf16(IDS).logits
    assert logits.dtype == torch.bfloat16
    eps = torch.finfo(torch.bfloat16).eps
    assert float((logits.float() - reference).abs().max()) <= 2 * eps * float(reference.abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_a_model_converted_to_16_bits_is_refused_and_evaluating_it_is_not(folder, dtype):
    """model.to(torch.bfloat16) (or .half()) converts the scaling vectors too: training it is refused, naming the
    fix; evaluation runs."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    model = NGPTForCausalLM.from_pretrained(folder).to(dtype)
    with torch.no_grad():
        model.eval()(IDS)
    with pytest.raises(NgptConfigError) as err:
        model.train()(IDS, labels=IDS, use_cache=False)
    half_spacing = {torch.bfloat16: "0.0039", torch.float16: "0.00049"}[dtype]
    assert str(err.value) == (
        f"NGPTForCausalLM's scaling vectors (alpha, s_qk, s_u, s_v, s_z) are {str(dtype).removeprefix('torch.')}: an "
        f"optimizer step smaller than half their spacing at their stored values ({half_spacing} at 1.0) is lost, so "
        "they would not train. Keep them in float32: load with from_pretrained(..., dtype=torch.bfloat16) rather "
        "than converting with .to() or .half(), or train a float32 model under bf16 autocast "
        "(TrainingArguments(bf16=True))"
    )
    model.requires_grad_(False)  # frozen (an adapter trains beside them): nothing to lose
    model(IDS, use_cache=False)
