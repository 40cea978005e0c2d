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

from conftest import REPO, cpu_env, free_port, run, torchrun  # noqa: E402

WORKER = REPO / "tests" / "workers" / "hf_fine_tune_after_engine_worker.py"
TRAINER_WORKER = REPO / "tests" / "workers" / "hf_fine_tune_after_trainer_worker.py"

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
    out = tmp_path / "result.json"
    torchrun(WORKER, str(stage), str(out), nproc=2, env=cpu_env(), timeout=400)
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


def test_a_plain_fine_tune_after_the_trainer_with_keep_on_the_sphere_trains(tmp_path):
    """Fault: after transformers' Trainer trained 3 steps at ZeRO 2 with the KeepOnTheSphere callback (released at
    the end of training), 3 torch AdamW steps on the same model were refused at the first forward (exit 2). Now they
    train (the embedding moves 3.4e-3) and end on the sphere within 2.5e-7."""
    out = tmp_path / "result.json"
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    proc = run([sys.executable, TRAINER_WORKER, out], env=env, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["moved"] > 1e-3
    assert result["deviation"] <= 2.5e-7
