"""A quantization_config in config.json is refused in ngpt_ds's one line whatever its method (review of 5abdc7b).

Fault: 5abdc7b refused a quantization_config in config.json only once transformers had built its quantizer
(`_load_pretrained_model`), after transformers validated the quantizer's environment. A local export whose config.json
held a bitsandbytes or Quanto quantization_config (a config copied from a quantized Llama, or edited) still stopped in
transformers' "ImportError: Using `bitsandbytes` 4-bit quantization requires bitsandbytes: `pip install -U
bitsandbytes>=0.46.1`" (Quanto: "... requires optimum-quanto library"), asking for a package that would not help;
through AutoModelForCausalLM (a config object passed in) the same. Now config.json (or the config passed) is read
before transformers' from_pretrained, and the line names the method and the fix."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

LINE = (
    r"^{cls} cannot be quantized by transformers \(quantization_config with quant_method '{method}'\): its "
    r"quantizers replace torch.nn.Linear layers, and ngpt_ds's projections are none, so the model would load "
    r"unquantized while reporting itself quantized. Load it without quantization_config \(and remove one from "
    r"config.json\); dtype=torch.bfloat16 halves its memory$"
)


def _quantized_copy(hf_saved, tmp_path, arch: str, name: str, options: dict, subfolder: str = ""):
    import transformers

    folder = tmp_path / "quantized"
    shutil.copytree(hf_saved[arch], folder / subfolder)
    config_json = folder / subfolder / "config.json"
    config = json.loads(config_json.read_text())
    config["quantization_config"] = getattr(transformers, name)(**options).to_dict()
    config_json.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("name", "options", "method"),
    [("BitsAndBytesConfig", {"load_in_4bit": True}, "bitsandbytes"), ("QuantoConfig", {}, "quanto")],
)
@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_config_json_quantized_by_a_package_not_installed_is_refused_in_one_line(
    arch, name, options, method, hf_saved, tmp_path
):
    """On 5abdc7b: 'ImportError: Using `bitsandbytes` 4-bit quantization requires bitsandbytes: ...' (Quanto: 'Loading
    an optimum-quanto quantized model requires optimum-quanto library'), before ngpt_ds's check."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.modeling_ngpt import MODELS

    folder = _quantized_copy(hf_saved, tmp_path, arch, name, options)
    with pytest.raises(NgptConfigError, match=LINE.format(cls=MODELS[arch].__name__, method=method)):
        MODELS[arch].from_pretrained(folder)


def test_a_quantized_config_in_a_subfolder_or_passed_as_an_object_is_refused(hf_saved, tmp_path):
    """The config from_pretrained reads: config.json of `subfolder`, and a config object passed in (what
    AutoModelForCausalLM passes). On 5abdc7b both: 'ImportError: Using `bitsandbytes` 4-bit quantization requires
    bitsandbytes'."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.modeling_ngpt import MODELS

    cls = MODELS["ngpt"]
    line = LINE.format(cls=cls.__name__, method="bitsandbytes")
    folder = _quantized_copy(hf_saved, tmp_path, "ngpt", "BitsAndBytesConfig", {"load_in_4bit": True}, "model")
    with pytest.raises(NgptConfigError, match=line):
        cls.from_pretrained(folder, subfolder="model")
    config = cls.config_class.from_pretrained(folder / "model")
    assert config.quantization_config["quant_method"] == "bitsandbytes"
    with pytest.raises(NgptConfigError, match=line):
        cls.from_pretrained(hf_saved["ngpt"], config=config)
    plain = cls.from_pretrained(hf_saved["ngpt"])  # a folder without one still loads
    assert type(plain) is cls and getattr(plain.config, "quantization_config", None) is None
