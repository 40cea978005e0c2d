"""LoRA (ngpt_ds.hf.lora) on an nGPT trained under DeepSpeed: its sphere matrices are frozen, so nothing DeepSpeed
updates can leave the sphere.

Fault: deepspeed.initialize on a sphere-LoRA PeftModel (as transformers' Trainer does with a DeepSpeed config) and a
training step stopped in "NGPTForCausalLM is being trained under DeepSpeed, whose optimizer updates fp32 copies of
the weights that the renormalization ... cannot reach: the nGPT matrices would leave the hypersphere": at ZeRO 3 in
the training forward, at ZeRO 1/2 in the optimizer step (its check read every parameter's DeepSpeed master, the
adapters' included). Its advice could not be followed either: keep_on_the_sphere takes no PeftModel's engine. Now
both checks look at the sphere matrices only: with all of them frozen (LoRA), training goes on; the adapted matrices
are Norm(W + BA), unit norm by construction."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")
pytest.importorskip("peft", reason="PEFT is not installed: pip install peft (launch/setup.sh --test installs it)")

from conftest import torchrun  # noqa: E402

WORKER = r"""
import json, os, sys
import deepspeed.ops
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # not used; its JIT build takes 30 s
import deepspeed, torch
from peft import LoraConfig, get_peft_model

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.lora import sphere_lora
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.model import ModelConfig

out, stage = sys.argv[1], int(sys.argv[2])
rank = int(os.environ["RANK"])
torch.manual_seed(0)
config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))
frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
peft_model = get_peft_model(model, sphere_lora(LoraConfig(r=4, target_modules=["qkv", "out", "up_gate", "down"])))
trainable = [p for p in peft_model.parameters() if p.requires_grad]
ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
      "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0}}
engine, *_ = deepspeed.initialize(model=peft_model, optimizer=torch.optim.AdamW(trainable, lr=1e-2), config=ds)
result = {"losses": []}
try:
    for step in range(2):
        ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(10 * step + rank))
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        result["losses"].append(loss.item())
except NgptConfigError as e:
    result["error"] = str(e)
with deepspeed.zero.GatheredParameters(list(peft_model.parameters())):
    named = dict(peft_model.base_model.model.named_parameters())
    result["b_moved"] = all(named[n].abs().max().item() > 0 for n in named if "lora_B" in n)
    result["frozen_same"] = all(
        torch.equal(p, frozen[n.replace(".base_layer", "")]) for n, p in named.items() if "lora_" not in n
    )
if rank == 0:
    with open(out + "/result.json", "w") as f:
        json.dump(result, f)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
from ngpt_ds.distributed import exit_process

exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
"""


@pytest.mark.parametrize("stage", [2, 3])
def test_lora_on_an_ngpt_trains_under_deepspeed(stage, tmp_path):
    """2 gloo ranks, ZeRO `stage`, two AdamW steps on the adapters. On the old code: result["error"] is the refusal
    ("NGPTForCausalLM is being trained under DeepSpeed, ..."), no loss recorded."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun(script, str(tmp_path), str(stage), timeout=300)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result.get("error") is None
    assert len(result["losses"]) == 2 and all(4.0 < loss < 8.0 for loss in result["losses"])
    assert result["b_moved"] is True  # B starts at 0: the steps moved every adapter
    assert result["frozen_same"] is True  # the nGPT matrices and scaling vectors bit for bit as they were
