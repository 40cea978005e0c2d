"""A step whose update leaves NaN/inf weights under a finite loss is not saved: the run diverges there."""

import json

import torch

from ngpt_ds.train import checkpoint

from conftest import train_run, write_diverging_configs


def test_nan_weights_after_a_finite_loss_are_not_saved_as_an_intact_checkpoint(tmp_path, tiny_dataset):
    """Fault: a step's loss is computed before its update, so an update that overflowed (the GPT baseline at
    lr 1e30 without clipping) left NaN weights under a finite loss; the step's checkpoint saved them
    (step_00000002: 14 tensors of NaN), and step 3's NaN loss then said 'Checkpoints up to step 2 are intact'
    and --resume auto diverged again. Now the run stops at step 2 before its save, naming the weights and the
    checkpoint of step 1, whose weights are finite. A 2-rank gloo job, ZeRO 0 in fp32 (ZeRO 1-3 and fp16 skip an overflowing step)."""
    config, ds = write_diverging_configs(tmp_path, checkpoint_interval=1)
    out = tmp_path / "out"
    proc = train_run(config, ds, tiny_dataset, out, nproc=2, check=False)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]
    checkpoints = out / "checkpoints"
    error = (
        "error: the weights blocks.0.attn.out.weight, blocks.0.attn.qkv.weight, blocks.0.attn_norm.weight and 11 more "
        "became NaN or inf in the update of step 2 (its loss, computed before the update, was finite); nothing "
        'was saved at or after it. Hints: lower train.lr (now 1e+30), set "gradient_clipping" in the DeepSpeed '
        f"config, check the data. Checkpoints up to step 1 are intact in {checkpoints} (--resume auto continues "
        "from the newest, step_00000001)"
    )
    assert error in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert [d.name for d in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000001"]
    state = torch.load(checkpoints / "step_00000001" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"], summary["checkpoint"]) == (
        "diverged",
        2,
        str(checkpoints / "step_00000001"),
    )
