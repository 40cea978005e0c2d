"""An nGPT fine-tuned by transformers' Trainer under DeepSpeed stays on the hypersphere (paper section 2.6), or is
refused: DeepSpeed's optimizer updates fp32 copies that the model's own renormalization after each optimizer step
cannot reach. ngpt_ds.hf.trainer.KeepOnTheSphere renormalizes those copies as ngpt_ds's trainer does."""

import json
import sys

import pytest

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

from conftest import REPO, cpu_env, free_port, run  # noqa: E402

WORKER = REPO / "tests" / "workers" / "hf_trainer_worker.py"


def _train(tmp_path, stage: int, callback: bool):
    out = tmp_path / f"result_{stage}_{callback}.json"
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    cmd = [sys.executable, WORKER, str(stage), "callback" if callback else "plain", out]
    proc = run(cmd, env=env, check=False, timeout=300)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.parametrize("stage", [1, 3])
def test_an_ngpt_trained_under_deepspeed_without_the_callback_is_refused_naming_it(tmp_path, stage):
    """Fault: transformers' Trainer with a DeepSpeed config (ZeRO 1 or 3) trained an nGPT without renormalizing it:
    the model's hook saw only DeepSpeed's flat fp32 partitions. Before: 3 AdamW steps at lr 1e-3 ran, reported
    their losses and left the matrices 0.00503 off unit norm, without a word. Now: its first training forward is
    refused, naming the callback that renormalizes DeepSpeed's masters (exit 2 here, nothing trained)."""
    proc, result = _train(tmp_path, stage, callback=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert result is None
    assert proc.stderr.strip().splitlines()[-1] == (
        "NGPTForCausalLM is being trained under DeepSpeed, whose optimizer updates fp32 copies of the weights that "
        "the renormalization after each optimizer step cannot reach: the nGPT matrices would leave the hypersphere "
        "(paper section 2.6). With transformers' Trainer add ngpt_ds's callback: `from ngpt_ds.hf.trainer import "
        "KeepOnTheSphere; trainer.add_callback(KeepOnTheSphere(trainer))` (it renormalizes DeepSpeed's fp32 masters "
        "after every step), or fine-tune with ngpt_ds's launch/train.py"
    )


def test_the_callback_keeps_an_ngpt_trained_under_deepspeed_on_the_sphere(tmp_path):
    """With KeepOnTheSphere the same 3 steps end on the sphere at ZeRO 0, 1 and 3, with the same losses at each
    (ZeRO 0 in fp32 needed no help: the torch optimizer holds the model's parameters; they are renormalized once,
    by the callback's hook, not twice)."""
    results = {}
    for stage in (0, 1, 3):
        proc, results[stage] = _train(tmp_path, stage, callback=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert results[stage]["deviation"] <= 2.5e-7, stage
    assert [round(loss, 4) for loss in results[0]["losses"]] == [6.2649, 6.2831, 6.2532]
    assert results[1]["losses"] == results[0]["losses"] == results[3]["losses"]


def _tiny_ngpt():
    import torch

    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=1, n_embd=32, n_head=2, seq_len=32)
    return MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config)).train()


def test_training_under_fsdp_is_refused_and_evaluation_is_not(monkeypatch):
    """FSDP (accelerate's, as transformers' Trainer sets it up; imitated here by its process-wide state, since FSDP
    needs GPUs) shards the weights where the renormalization cannot reach them: a training forward is refused, an
    evaluation forward (eval mode or no_grad) runs."""
    import torch
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    from ngpt_ds.errors import NgptConfigError

    model = _tiny_ngpt()
    ids = torch.randint(3, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    monkeypatch.setitem(AcceleratorState._shared_state, "distributed_type", DistributedType.FSDP)
    with pytest.raises(NgptConfigError) as err:
        model(ids, labels=ids, use_cache=False)
    assert str(err.value) == (
        "NGPTForCausalLM is being trained under FSDP, which shards the weights so that the renormalization after "
        "each optimizer step cannot reach them: the nGPT matrices would leave the hypersphere (paper section 2.6). "
        "Fine-tune without FSDP (one device, or DDP), under DeepSpeed with ngpt_ds's KeepOnTheSphere callback "
        "(ngpt_ds.hf.trainer), or with ngpt_ds's launch/train.py"
    )
    with torch.no_grad():
        model(ids, use_cache=False)
    model.eval()(ids, labels=ids, use_cache=False).loss.backward()


def test_deepspeed_in_16_bits_at_zero_0_is_refused_and_in_fp32_is_not(monkeypatch):
    """At ZeRO 0 DeepSpeed's bf16/fp16 optimizer keeps fp32 copies the model's hook cannot reach (refused); in fp32
    the torch optimizer holds the model's own parameters, which the hook renormalizes (trained)."""
    import torch
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    from ngpt_ds.errors import NgptConfigError

    model = _tiny_ngpt()
    ids = torch.randint(3, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    monkeypatch.setitem(AcceleratorState._shared_state, "distributed_type", DistributedType.DEEPSPEED)
    model(ids, labels=ids, use_cache=False).loss.backward()
    with pytest.raises(NgptConfigError, match=r"^NGPTForCausalLM is being trained under DeepSpeed, whose optimizer"):
        model.to(torch.bfloat16)(ids, labels=ids, use_cache=False)
