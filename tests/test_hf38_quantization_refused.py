"""transformers' quantization of the transformers classes is refused (ngpt_ds/hf/pretrained_loading.py).

Fault: transformers' quantizers (bitsandbytes, GPTQ, AWQ, FP8, BitNet, ...) replace torch.nn.Linear layers, and
ngpt_ds's projections are none. With bitsandbytes installed (0.50 runs on the CPU too),
`from_pretrained(OUT, quantization_config=BitsAndBytesConfig(load_in_4bit=True))` loaded the model with every weight
in float32 while `is_loaded_in_4bit` said True; transformers warned only "You are loading your model using eetq but no
linear modules were found in your model". A folder whose config.json holds a quantization_config (BitNet here, which
needs no package) loaded the same way, `is_quantized` True. Now both are one NgptConfigError naming the method and the
fix, before any weight is read. Without bitsandbytes, transformers' own ImportError ("... requires bitsandbytes: `pip
install -U bitsandbytes>=0.46.1`") came first, asking for a package that would not have helped."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def _line(cls: str, method: str) -> str:
    return (
        rf"^{cls} cannot be quantized by transformers \(quantization_config with quant_method '{method}'\): its "
        r"quantizers replace torch.nn.Linear layers, and ngpt_ds's projections are none, so the model would load "
        r"unquantized while reporting itself quantized. Load it without quantization_config \(and remove one from "
        r"config.json\); dtype=torch.bfloat16 halves its memory$"
    )


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_quantization_config_in_config_json_is_refused(arch, hf_saved, tmp_path):
    """On the old code the folder loaded: 'assert False' for `model.is_quantized` True with float32 weights."""
    import transformers

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.modeling_ngpt import MODELS

    folder = tmp_path / "quantized"
    shutil.copytree(hf_saved[arch], folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = transformers.BitNetQuantConfig().to_dict()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NgptConfigError, match=_line(MODELS[arch].__name__, "bitnet")):
        model = MODELS[arch].from_pretrained(folder)
        assert not model.is_quantized, {p.dtype for p in model.parameters()}


@pytest.mark.parametrize(
    ("name", "options", "method"),
    [
        ("BitsAndBytesConfig", {"load_in_8bit": True}, "bitsandbytes"),
        ("BitsAndBytesConfig", {"load_in_4bit": True}, "bitsandbytes"),
        ("FineGrainedFP8Config", {}, "fp8"),
        ("QuantoConfig", {}, "quanto"),
    ],
)
def test_a_quantization_config_argument_is_refused_before_transformers_reads_it(name, options, method, hf_saved):
    """With or without the quantizer's package. On the old code: transformers' 'ImportError: Using `bitsandbytes`
    8-bit quantization requires bitsandbytes: ...' (or, installed, the unquantized load), FP8's 'RuntimeError: No GPU or
    XPU found. A GPU or XPU is needed for FP8 quantization.', Quanto's ImportError."""
    import transformers

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    quantization = getattr(transformers, name)(**options)
    with pytest.raises(NgptConfigError, match=_line("NGPTForCausalLM", method)):
        NGPTForCausalLM.from_pretrained(hf_saved["ngpt"], quantization_config=quantization)


def test_bitsandbytes_4bit_loaded_unquantized_before(hf_saved):
    """Where bitsandbytes is installed: on the old code the model loaded, `is_loaded_in_4bit` True and every weight
    float32 ('assert False' on the first check below); now refused."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (not a test extra: 125 MB installed)")
    from transformers import BitsAndBytesConfig

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM

    with pytest.raises(NgptConfigError, match=_line("NGPTForCausalLM", "bitsandbytes")):
        model = NGPTForCausalLM.from_pretrained(
            hf_saved["ngpt"], quantization_config=BitsAndBytesConfig(load_in_4bit=True)
        )
        assert not model.is_loaded_in_4bit, {p.dtype for p in model.parameters()}
