"""A plain torch fine-tune of an nGPT that DeepSpeed trained before at ZeRO 1/2 (with ngpt_ds's renormalization,
keep_on_the_sphere, then released) runs and stays on the hypersphere; training through the engine without that
renormalization is still refused, on both ranks of a 2-rank job, before any weight moves.

Fault: the training guard (ngpt_ds.hf.training_guards._check_renormalized_here) took DeepSpeed's `_hp_mapping`
attribute on the weights for DeepSpeed training. DeepSpeed leaves it on the model's parameters: engine.destroy()
sets it to None, and an engine left alone keeps it. So a later fine-tune of the same model object with
torch.optim.AdamW (which the model's own hook renormalizes) was refused at its first forward ("NGPTForCausalLM is
being trained under DeepSpeed ..."). Now ZeRO 1/2 in fp32 is refused at the first step of a torch optimizer that
holds DeepSpeed's fp32 partition a live mapping points into (_refuse_unreached_masters), which a plain torch
optimizer over model.parameters() does not.
"""

import json
import sys

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

from conftest import cpu_env, free_port, run, torchrun  # noqa: E402

WORKER = r"""
import json, os, sys
import deepspeed.ops
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # not used; its JIT build takes 30 s
import deepspeed, torch
import torch.distributed as dist

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.hf.trainer import keep_on_the_sphere, release
from ngpt_ds.model import ModelConfig
from ngpt_ds.model.sphere import max_norm_deviation

stage, out = int(sys.argv[1]), sys.argv[2]
deepspeed.init_distributed(dist_backend="gloo")
rank = dist.get_rank()


def batch(i):
    ids = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(100 * rank + i))
    return ids


def trained_by_deepspeed():
    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))
    ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": stage}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=ds)
    hook = keep_on_the_sphere(engine)
    for i in range(3):
        ids = batch(i)
        engine.backward(engine(ids, labels=ids, use_cache=False).loss)
        engine.step()
    deviation = hook.max_deviation()
    release(model)
    return model, engine, deviation


def plain_fine_tune(model):
    weight = model.model.embed.weight
    start = weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    try:
        for i in range(3):
            ids = batch(10 + i)
            loss = model(ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
    except NgptConfigError as e:
        return {"refused": str(e)}
    return {"losses": losses, "moved": float((weight.detach() - start).abs().max()),
            "deviation": max_norm_deviation(model.model)}


result = {}
model, engine, result["deepspeed_deviation"] = trained_by_deepspeed()
result["mapping_before_destroy"] = getattr(model.model.embed.weight, "_hp_mapping", None) is not None
engine.destroy()
result["destroyed"] = plain_fine_tune(model)

model, engine, _ = trained_by_deepspeed()
result["beside_the_engine"] = plain_fine_tune(model)

# The engine stepping its masters without the renormalization: refused before the update, on every rank.
model, engine, _ = trained_by_deepspeed()
weights = {n: p.detach().clone() for n, p in model.named_parameters()}
masters = [g.detach().clone() for g in engine.optimizer.single_partition_of_fp32_groups]
ids = batch(20)
try:
    engine.backward(engine(ids, labels=ids, use_cache=False).loss)
    engine.step()
    result["live"] = "trained"
except NgptConfigError as e:
    result["live"] = str(e)
result["live_weights_kept"] = all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
result["live_masters_kept"] = all(
    torch.equal(a, b) for a, b in zip(masters, engine.optimizer.single_partition_of_fp32_groups)
)
with open(f"{out}.{rank}", "w") as f:
    json.dump(result, f)
"""

REFUSAL = (
    "NGPTForCausalLM is being trained under DeepSpeed, whose optimizer updates fp32 copies of the weights that the "
    "renormalization after each optimizer step cannot reach: the nGPT matrices would leave the hypersphere (paper "
    "section 2.6). With transformers' Trainer add ngpt_ds's callback: `from ngpt_ds.hf.trainer import "
    "KeepOnTheSphere; trainer.add_callback(KeepOnTheSphere(trainer))` (it renormalizes DeepSpeed's fp32 masters "
    "after every step), or fine-tune with ngpt_ds's launch/train.py"
)


@pytest.mark.parametrize("stage", [1, 2])
def test_a_plain_fine_tune_after_deepspeed_trains_and_live_deepspeed_is_still_refused(tmp_path, stage):
    """Fault: after 3 ZeRO 1/2 steps with keep_on_the_sphere and release(model), 3 torch AdamW steps on the same
    model were refused at the first forward, after engine.destroy() (its weights' _hp_mapping None) and beside the
    engine (mapping live). Now both train (weights move, losses finite) and end on the sphere within 2.5e-7 on each
    rank; one more engine step without the renormalization is refused on both ranks, weights and fp32 masters
    bit for bit as they were."""
    script, out = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(WORKER)
    torchrun(script, str(stage), str(out), nproc=2, env=cpu_env(), timeout=400)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"result.json.{rank}").read_text())
        assert result["deepspeed_deviation"] <= 2.5e-7
        assert result["mapping_before_destroy"] == (rank == 0)  # rank 0's partition starts with the embedding
        for case in ("destroyed", "beside_the_engine"):
            tuned = result[case]
            assert "refused" not in tuned, (rank, case, tuned)
            assert len(tuned["losses"]) == 3 and all(5.0 < loss < 7.5 for loss in tuned["losses"]), (rank, case)
            assert tuned["moved"] > 1e-3, (rank, case)
            assert tuned["deviation"] <= 2.5e-7, (rank, case)
        assert result["destroyed"]["losses"] == result["beside_the_engine"]["losses"]
        assert result["live"] == REFUSAL, rank
        assert result["live_weights_kept"] and result["live_masters_kept"], rank


TRAINER_WORKER = r"""
import json, sys
import deepspeed.ops
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # not used; its JIT build takes 30 s
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.configuration_ngpt import CONFIGS
from ngpt_ds.hf.modeling_ngpt import MODELS
from ngpt_ds.hf.trainer import KeepOnTheSphere
from ngpt_ds.model import ModelConfig
from ngpt_ds.model.sphere import max_norm_deviation

out = sys.argv[1]
torch.manual_seed(0)
config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
model = MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))


class Data(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = torch.randint(3, 512, (16,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
      "gradient_clipping": "auto", "zero_optimization": {"stage": 2}}
args = TrainingArguments(output_dir=out + ".trainer", per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                         deepspeed=ds, report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1)
trainer = Trainer(model=model, args=args, train_dataset=Data())
trainer.add_callback(KeepOnTheSphere(trainer))
trainer.train()
weight = model.model.embed.weight
start = weight.detach().clone()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model.train()
try:
    for i in range(3):
        ids = torch.randint(3, 512, (4, 16), generator=torch.Generator().manual_seed(50 + i))
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
except NgptConfigError as e:
    print(e, file=sys.stderr)
    raise SystemExit(2)
with open(out, "w") as f:
    json.dump({"moved": float((weight.detach() - start).abs().max()), "deviation": max_norm_deviation(model.model)}, f)
"""


def test_a_plain_fine_tune_after_the_trainer_with_keep_on_the_sphere_trains(tmp_path):
    """Fault: after transformers' Trainer trained 3 steps at ZeRO 2 with the KeepOnTheSphere callback (released at
    the end of training), 3 torch AdamW steps on the same model were refused at the first forward (exit 2). Now they
    train (the embedding moves 3.4e-3) and end on the sphere within 2.5e-7."""
    script, out = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(TRAINER_WORKER)
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    proc = run([sys.executable, script, out], env=env, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["moved"] > 1e-3
    assert result["deviation"] <= 2.5e-7
