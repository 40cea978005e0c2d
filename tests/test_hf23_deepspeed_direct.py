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

from conftest import REPO, cpu_env, free_port, run  # noqa: E402

WORKER = REPO / "tests" / "workers" / "hf_deepspeed_initialize_worker.py"


def _train(tmp_path, mode: str):
    out = tmp_path / f"result_{mode}.json"
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    proc = run([sys.executable, WORKER, mode, out], env=env, check=False, timeout=300)
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
