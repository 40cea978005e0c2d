"""An nGPT trained by a DeepSpeed engine from `deepspeed.initialize` itself (no transformers Trainer) at ZeRO 0 in
bf16 is refused, or kept on the hypersphere (paper section 2.6) by ngpt_ds.hf.trainer.keep_on_the_sphere.

Fault: the training guard (ngpt_ds.hf.training_guards._check_renormalized_here) recognised DeepSpeed by marks on the
weights (ZeRO 1-3) or by accelerate's state (transformers' Trainer). deepspeed.initialize at ZeRO 0 in bf16 leaves
neither: its FP16 optimizer updates fp32 masters the model's own renormalization cannot reach. Only the refusal of
16-bit scaling vectors stopped it, with advice DeepSpeed cannot follow (it casts the whole model); with the scaling
vectors frozen, 3 AdamW steps trained the matrices off the sphere without a word.
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

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.model import ModelConfig
from ngpt_ds.model.sphere import max_norm_deviation, sphere_matrices

mode, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))
if mode == "frozen_scales":
    for name, p in model.named_parameters():
        if not any(m.param is p for m in sphere_matrices(model)):
            p.requires_grad_(False)
ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
      "zero_optimization": {"stage": 0}}
params = [p for p in model.parameters() if p.requires_grad]
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-3), config=ds)
hook = None
if mode == "kept":
    from ngpt_ds.hf.trainer import keep_on_the_sphere

    hook = keep_on_the_sphere(engine)
losses = []
try:
    for i in range(3):
        ids = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(i))
        loss = engine(ids, labels=ids, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
except NgptConfigError as e:
    print(e, file=sys.stderr)
    raise SystemExit(2)
result = {"losses": losses, "working": max_norm_deviation(model.model), "dtype": str(model.model.embed.weight.dtype)}
if hook is not None:
    result["masters"] = hook.max_deviation()
with open(out, "w") as f:
    json.dump(result, f)
torch.distributed.destroy_process_group()
"""


def _train(tmp_path, mode: str):
    script, out = tmp_path / "worker.py", tmp_path / f"result_{mode}.json"
    script.write_text(WORKER)
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    proc = run([sys.executable, script, mode, out], env=env, check=False, timeout=300)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


REFUSAL = (
    "NGPTForCausalLM is bfloat16 under DeepSpeed, whose bf16/fp16 optimizer updates fp32 copies of the weights that "
    "the renormalization after each optimizer step cannot reach: the nGPT matrices would leave the hypersphere (paper "
    "section 2.6). After deepspeed.initialize, attach ngpt_ds's renormalization of those copies: `from "
    "ngpt_ds.hf.trainer import keep_on_the_sphere; keep_on_the_sphere(engine)` (with transformers' Trainer: the "
    "KeepOnTheSphere callback), or fine-tune in fp32 or with ngpt_ds's launch/train.py"
)


@pytest.mark.parametrize("mode", ["refused", "frozen_scales"])
def test_zero_0_bf16_from_deepspeed_initialize_is_refused_as_deepspeed_training(tmp_path, mode):
    """Fault: deepspeed.initialize at ZeRO 0 with bf16 was not recognised as DeepSpeed. Before: refused for its
    bf16 scaling vectors, with advice to load them in fp32 that DeepSpeed undoes (`refused`); with the scaling
    vectors frozen, 3 AdamW steps ran and left the bf16 matrices 0.0070 off unit norm (`frozen_scales`). Now the
    first training forward is refused, naming keep_on_the_sphere (exit 2 here, nothing trained)."""
    proc, result = _train(tmp_path, mode)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert result is None
    assert proc.stderr.strip().splitlines()[-1] == REFUSAL


def test_keep_on_the_sphere_keeps_a_deepspeed_initialize_engine_at_zero_0_bf16_on_the_sphere(tmp_path):
    """keep_on_the_sphere(engine) renormalizes DeepSpeed's fp32 masters after every step: 3 AdamW steps at lr 1e-3
    end with them unit norm to fp32 precision, the bf16 working copy within its rounding."""
    proc, result = _train(tmp_path, "kept")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["dtype"] == "torch.bfloat16"
    assert result["masters"] <= 2.5e-7
    assert result["working"] <= 2**-8  # bf16 rows of unit norm: half a bf16 spacing at 1 (0.0017 measured)
    assert [round(loss, 3) for loss in result["losses"]] == [6.251, 6.297, 6.253]
