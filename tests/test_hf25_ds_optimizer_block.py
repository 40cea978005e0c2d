"""keep_on_the_sphere(engine) on an engine whose optimizer comes from the DeepSpeed JSON's "optimizer" block, at ZeRO 0
in bf16: DeepSpeed builds its FusedAdam and wraps it in FP16_Optimizer (engine._configure_fp16_optimizer), which
keeps one flat fp32 master per parameter group (fp32_groups_flat) laid out as the flat bf16 group the model's
weights are views of.

Fault: ngpt_ds.train.hypersphere.HypersphereHook knew FP16_UnfusedOptimizer (a torch optimizer passed to
deepspeed.initialize) but not FP16_Optimizer: keep_on_the_sphere raised NotImplementedError ("nGPT renormalization
does not know DeepSpeed optimizer FP16_Optimizer"), so such an engine could not train an nGPT at all. Now its fp32
masters are renormalized after every step and the bf16 working copy is DeepSpeed's copy of them.
"""

import json
import sys

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

from conftest import cpu_env, free_port, run  # noqa: E402

WORKER = r"""
import json, sys
import deepspeed.ops
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # not used; its JIT build takes 30 s
import deepspeed, torch

from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.hf.trainer import keep_on_the_sphere
from ngpt_ds.model import ModelConfig
from ngpt_ds.model.sphere import sphere_matrices

out = sys.argv[1]
torch.manual_seed(0)
config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))
ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
      "zero_optimization": {"stage": 0}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
hook = keep_on_the_sphere(engine)
losses = []
for i in range(3):
    ids = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(i))
    loss = engine(ids, labels=ids, use_cache=False).loss
    engine.backward(loss)
    engine.step()
    losses.append(float(loss.detach()))
with torch.no_grad():
    masters = {id(p): hook.fp32_value(p) for p in model.parameters()}
    deviation = max(
        float((torch.linalg.vector_norm(masters[id(m.param)].double(), dim=m.norm_dim) - 1).abs().max())
        for m in sphere_matrices(model)
    )
    copies = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), masters[id(p)].to(p.dtype))]
result = {
    "optimizer": type(engine.optimizer).__name__,
    "basic": type(engine.basic_optimizer).__name__,
    "dtype": str(model.model.embed.weight.dtype),
    "losses": losses,
    "masters": deviation,
    "hook_masters": hook.max_deviation(),
    "renormalized_units": hook.renormalized_units,
    "working_not_masters": copies,
    "matrices": len(sphere_matrices(model)),
}
with open(out, "w") as f:
    json.dump(result, f)
torch.distributed.destroy_process_group()
from ngpt_ds.distributed import exit_process

exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
"""


def test_keep_on_the_sphere_renormalizes_fp16_optimizer_masters_of_a_json_optimizer_block(tmp_path):
    """Fault: keep_on_the_sphere raised NotImplementedError on FP16_Optimizer (ZeRO 0, bf16, the JSON's optimizer
    block). Now, after 3 AdamW steps at lr 1e-3, every fp32 master norm vector is unit norm within 1e-6, the hook ran
    once per step, and every bf16 weight equals its fp32 master cast to bf16."""
    script, out = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(WORKER)
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    proc = run([sys.executable, script, out], env=env, check=False, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["optimizer"], result["basic"], result["dtype"]) == ("FP16_Optimizer", "FusedAdam", "torch.bfloat16")
    assert result["matrices"] == 10  # embed, head, 4 per block
    assert result["masters"] <= 1e-6
    assert result["hook_masters"] <= 1e-6
    assert result["renormalized_units"] == 3
    assert result["working_not_masters"] == []
    # the losses of the same steps through FP16_UnfusedOptimizer (tests/test_hf23_deepspeed_direct.py)
    assert [round(loss, 3) for loss in result["losses"]] == [6.251, 6.297, 6.253]
