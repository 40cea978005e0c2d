"""save_pretrained of an nGPT handed back by a DeepSpeed engine at ZeRO 3 refuses to write its empty partitions.

Fault: after training at ZeRO 3 (deepspeed.initialize, 2 ranks), each parameter is an empty tensor on every rank
(DeepSpeed keeps a flat piece of it elsewhere). model.save_pretrained wrote those torch.Size([0]) tensors as the
weights without a word, and the folder failed to load ('size mismatch'): the trained weights were lost. Now it is
refused, naming deepspeed.zero.GatheredParameters, inside which the same call saves the whole model.
"""

import json

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

from conftest import torchrun  # noqa: E402

WORKER = r"""
import json, os, sys
import deepspeed.ops
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # not used; its JIT build takes 30 s
import deepspeed, torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.hf.trainer import keep_on_the_sphere, release
from ngpt_ds.model import ModelConfig
from ngpt_ds.model.sphere import max_norm_deviation

out = sys.argv[1]
rank = int(os.environ["RANK"])
torch.manual_seed(0)
config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))
ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=ds)
keep_on_the_sphere(engine)
for step in range(2):
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(10 * step + rank))
    engine.backward(engine(ids, labels=ids, use_cache=False).loss)
    engine.step()
release(model)
result = {"numel_here": model.model.embed.weight.numel()}
try:
    model.save_pretrained(out + "/plain", is_main_process=rank == 0)
    result["plain"] = "saved"
except NgptConfigError as e:
    result["plain"] = str(e)
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    model.save_pretrained(out + "/gathered", is_main_process=rank == 0)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
torch.distributed.barrier()
if rank == 0:
    reloaded = MODELS["ngpt"].from_pretrained(out + "/gathered").state_dict()
    result["same"] = sorted(reloaded) == sorted(weights) and all(torch.equal(reloaded[k], weights[k]) for k in weights)
    result["deviation"] = max_norm_deviation(MODELS["ngpt"].from_pretrained(out + "/gathered").model)
    with open(out + "/result.json", "w") as f:
        json.dump(result, f)
torch.distributed.destroy_process_group()
from ngpt_ds.distributed import exit_process

exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
"""


def test_save_pretrained_of_zero3_partitions_is_refused_and_saves_whole_inside_gathered_parameters(tmp_path):
    """Fault: save_pretrained of a ZeRO-3 model (2 ranks, every parameter partitioned) wrote empty tensors. Now it
    is refused naming GatheredParameters; inside it the folder reloads bit for bit, on the sphere."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun(script, str(tmp_path), timeout=300)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["numel_here"] == 0
    assert result["plain"] == (
        "NGPTForCausalLM.save_pretrained: 21 of its weights (model.embed.weight first, [512, 32] holding 0 values on "
        "this rank) are DeepSpeed ZeRO-3 partitions, which would be saved as empty tensors. Save on every rank "
        "inside `with deepspeed.zero.GatheredParameters(list(model.parameters())):` (is_main_process=rank == 0), "
        "or with transformers' trainer.save_model()"
    )
    assert result["same"] is True
    assert result["deviation"] <= 2.5e-7
    assert not (tmp_path / "plain" / "model.safetensors").exists()
