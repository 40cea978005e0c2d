"""Fault: DeepSpeed's universal converter, which a resume at another data-parallel size runs on the checkpoint
(`python -m ngpt_ds.train.reshape SOURCE OUTPUT`), makes a folder of every parameter name the checkpoint's
files hold, joined to its output folder. A crafted name ('/elsewhere/x', '../../x') wrote the parameter's
fp32 weights and Adam moments outside the conversion's folder, and the conversion went on. Names in the
optimizer shards that the model states do not list sealed a conversion without those parameters' Adam
moments, which DeepSpeed's load then stopped on with an AssertionError traceback, at every rerun.

The converter now refuses both before it writes anything, with one 'error:' line naming the file (the
rank's message quotes it), and a resume exits 2 with nothing written outside its --out.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import cpu_env, torchrun, train_cmd, write_ds_config

SOURCE = "checkpoints/step_00000010"


def genuine_checkpoint(reference_runs, folder):
    """A copy of the 2-rank ZeRO-2 reference run's step 10."""
    source = folder / "checkpoints" / "step_00000010"
    shutil.copytree(reference_runs["z2_ws2"] / SOURCE, source)
    return source


def rename(path, renamed, *, mappings=False, shapes=False):
    """Rename embed.weight in a DeepSpeed file's param_slice_mappings (optimizer shards) or param_shapes."""
    states = torch.load(path, weights_only=False)
    if mappings:
        groups = states["optimizer_state_dict"]["param_slice_mappings"]
        states["optimizer_state_dict"]["param_slice_mappings"] = [
            {(renamed if k == "embed.weight" else k): v for k, v in group.items()} for group in groups
        ]
    if shapes:
        states["param_shapes"] = [
            {(renamed if k == "embed.weight" else k): v for k, v in group.items()} for group in states["param_shapes"]
        ]
    torch.save(states, path)


def remark(checkpoint):
    """The manifest rebuilt over the altered files, as whoever crafted them would."""
    from ngpt_ds.train import checkpoint as ck

    (checkpoint / "COMPLETE").write_text(json.dumps(ck.build_manifest(checkpoint, ck.step_of(checkpoint.name))))


def convert(source, output):
    return subprocess.run(
        [sys.executable, "-m", "ngpt_ds.train.reshape", str(source), str(output)],
        capture_output=True,
        text=True,
        env=cpu_env(),
        timeout=300,
    )


def refused_name(path, name):
    return (
        f"error: {path} was refused: it names parameter(s) {name!r}, which are not parameter names (dotted "
        "letters, digits and _; DeepSpeed's converter makes a folder of each name, so these would write outside "
        "the conversion's folder). This file was not written by the ngpt_ds trainer, or it was altered. Do not "
        "use it\n"
    )


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_crafted_parameter_name_writes_nothing_outside_the_conversion(reference_runs, tmp_path, where):
    """absolute: the optimizer shards name '<tmp>/outside/embed.weight' (the old code wrote its 4 slices
    there). relative: the shards and the model states both name '../../../outside/embed.weight', which the
    converter joined to its output/tmp folder (the old code wrote the slices and the merged files there)."""
    source = genuine_checkpoint(reference_runs, tmp_path / "run")
    outside = tmp_path / "outside"
    name = str(outside / "embed.weight") if where == "absolute" else "../../../outside/embed.weight"
    for shard in sorted(source.glob("*_optim_states.pt")):
        rename(shard, name, mappings=True)
    if where == "relative":
        rename(source / "mp_rank_00_model_states.pt", name, shapes=True)
    first = "mp_rank_00_model_states.pt" if where == "relative" else "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    output = tmp_path / "work" / "converted"
    output.parent.mkdir()

    proc = convert(source, output)
    assert not outside.exists(), sorted(str(p) for p in outside.rglob("*"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.endswith(refused_name(source / first, name)), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not output.exists()  # refused before the converter started


def test_shards_naming_parameters_the_model_states_do_not_list_are_refused(reference_runs, tmp_path):
    """Safe names, but not the model's: the old code converted without error, leaving embed.weight with its
    fp32 weights alone, and DeepSpeed's universal load then raised 'AssertionError: Steps [None, ...] are not
    equal'."""
    source = genuine_checkpoint(reference_runs, tmp_path / "run")
    for shard in sorted(source.glob("*_optim_states.pt")):
        rename(shard, "embed.weights", mappings=True)
    proc = convert(source, tmp_path / "converted")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.endswith(
        f"error: {source} was refused: the optimizer shards hold parameter(s) 'embed.weights' that its model "
        "states do not list, so a conversion would leave the optimizer state of some parameters out. The "
        "checkpoint is incomplete or was altered. Do not use it\n"
    ), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_a_genuine_checkpoint_converts_with_every_parameter(reference_runs, tmp_path):
    """The check passes DeepSpeed's own names: every parameter gets its fp32 weights and both Adam moments."""
    source = genuine_checkpoint(reference_runs, tmp_path / "run")
    proc = convert(source, tmp_path / "converted")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shapes = torch.load(source / "mp_rank_00_model_states.pt", weights_only=False)["param_shapes"]
    names = sorted(n for group in shapes for n in group)
    zero = tmp_path / "converted" / "zero"
    assert sorted(p.name for p in zero.iterdir() if p.is_dir()) == names
    for name in names:
        assert {"fp32.pt", "exp_avg.pt", "exp_avg_sq.pt"} <= {p.name for p in (zero / name).iterdir()}, name


def test_a_resume_at_another_size_from_a_crafted_checkpoint_stops_with_nothing_written_outside(
    reference_runs, tmp_path
):
    """Through the trainer (1 rank resuming the 2-rank checkpoint, its manifest rebuilt): exit 2 naming the
    file; the old code wrote the slices outside, sealed the conversion, then failed in DeepSpeed's load."""
    source = genuine_checkpoint(reference_runs, tmp_path / "run")
    outside = tmp_path / "outside"
    for shard in sorted(source.glob("*_optim_states.pt")):
        rename(shard, str(outside / "embed.weight"), mappings=True)
    remark(source)
    ds = write_ds_config(tmp_path / "z2_dp1.json", stage=2, bf16=False, micro=4, accum=2)
    out = tmp_path / "one"
    cmd = train_cmd(reference_runs.config, ds, reference_runs.data, out, "--resume", source, "--max-steps", "12")
    proc = torchrun(*cmd, nproc=1, check=False)
    assert not outside.exists(), sorted(str(p) for p in outside.rglob("*"))
    assert proc.returncode != 0 and "(exitcode: 2)" in proc.stderr, proc.stderr[-3000:]
    assert f"DeepSpeed's ds_to_universal could not convert {source} (exit 1): error: {source}/" in proc.stderr
    assert "which are not parameter names" in proc.stderr
    assert not (out / "checkpoints" / "step_00000010-universal").exists()
    assert "step " not in proc.stdout  # before any compute
