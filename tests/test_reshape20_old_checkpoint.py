"""Fault: a checkpoint written before ngpt_ds could resume at another world size holds no
`universal_checkpoint_info` (the trainer now sets it on every save, README "Resuming at another world size").
Resumed at another data-parallel size, DeepSpeed's ds_to_universal refused it, and the resume stopped with exit 2
on "could not convert ... (exit 1): ... assert universal_checkpoint_info is not None, f'Required {UNIVERSAL_
CHECKPOINT_INFO} state is missing in checkpoint..." and the advice to resume at the old size: a job that no
longer had those ranks could not go on. The converter now injects the missing entry (DeepSpeed's
inject_missing_state: the same version entry the trainer saves; it declares no tensor-parallel patterns), and
the old checkpoint converts and continues exactly as a current one.
"""

import json
import shutil
import sys

import torch

from conftest import read_metrics, run, train_cmd, write_ds_config


def test_a_checkpoint_without_universal_checkpoint_info_converts_and_continues_exactly(reference_runs, tmp_path):
    genuine = reference_runs["z2_ws2"] / "checkpoints" / "step_00000010"
    old = tmp_path / "old" / "checkpoints" / "step_00000010"
    shutil.copytree(genuine, old)
    from ngpt_ds.train import checkpoint

    (states_file,) = old.glob("*model_states.pt")
    states = torch.load(states_file, weights_only=False)
    del states["universal_checkpoint_info"]  # as the trainer saved it before the world-size resume existed
    torch.save(states, states_file)
    (old / "COMPLETE").write_text(json.dumps(checkpoint.build_manifest(old, 10)))

    ds = write_ds_config(tmp_path / "z2_dp1.json", stage=2, bf16=False, micro=4, accum=2)
    losses = {}
    for name, source in (("old", old), ("genuine", genuine)):
        out = tmp_path / f"resumed_{name}"
        cmd = train_cmd(reference_runs.config, ds, reference_runs.data, out, "--resume", source, "--max-steps", "12")
        proc = run([sys.executable, *cmd], check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        universal = out / "checkpoints" / "step_00000010-universal"
        assert (
            f"resuming step 10 saved at data-parallel size 2 on data-parallel size 1 (ZeRO 2): converted it once "
            f"into the universal checkpoint {universal}, loaded it and renormalized the sphere matrices"
        ) in proc.stdout
        losses[name] = [(m["step"], m["train/loss"]) for m in read_metrics(out)]
    assert [step for step, _ in losses["old"]] == [11, 12]
    assert losses["old"] == losses["genuine"]
