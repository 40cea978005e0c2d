"""Fault: generate, evaluate and export read a pipeline checkpoint's weights under the model's own names by
`model_parameter_name` ('<layer index>.<path>'). A name in its files without a layer index ('x',
'a.block.y': the files altered, manifest rebuilt) stopped generate.py with a ValueError traceback, and
'0.block.y' became 'blocks.-1.y'. Such a name is now an NgptConfigError naming it: exit 2, one 'error:' line.
"""

import json
import sys

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.parallel.pipeline import model_parameter_name

from conftest import REPO, run, torchrun, train_flags, write_ds_config, write_yaml

MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}
TRAIN = {"max_steps": 1, "lr": 1e-2, "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 1}


def refusal(name):
    return (
        f"the pipeline checkpoint names a parameter {name!r}, where DeepSpeed's PipelineModule writes "
        "'<layer index>.<path in the layer>' (blocks from layer 1): its files are damaged or were altered; "
        "use another checkpoint"
    )


def test_pipeline_names_map_to_the_models_and_malformed_ones_are_named():
    assert model_parameter_name("0.embed.weight") == "embed.weight"
    assert model_parameter_name("2.block.attn.qkv.weight") == "blocks.1.attn.qkv.weight"
    assert model_parameter_name("3.s_z.param") == "s_z.param"
    for name in ("x", "a.block.attn.qkv.weight", "0.block.attn.qkv.weight", "1.", "².block.x"):
        with pytest.raises(NgptConfigError) as err:
            model_parameter_name(name)
        assert str(err.value) == refusal(name)


def test_generate_refuses_a_pipeline_checkpoint_with_a_malformed_name(tmp_path, tiny_dataset):
    """PP2, ZeRO 1, fp32, one step; stage 0's model states rename '0.embed.weight' to 'x'. The old code: a
    'ValueError: not enough values to unpack' traceback from model_parameter_name."""
    from ngpt_ds.train import checkpoint as ck

    config = write_yaml(tmp_path / "pp2.yaml", {**MODEL, "arch": "ngpt"}, {**TRAIN, "pipeline_parallel_size": 2})
    ds = write_ds_config(tmp_path / "z1.json", stage=1, bf16=False, micro=2, accum=2)
    out = tmp_path / "pp2"
    args = train_flags(config, ds, tiny_dataset, out)
    torchrun(REPO / "launch/train.py", *args, nproc=2)
    step = out / "checkpoints" / "step_00000001"
    states_file = step / "mp_rank_00_model_states.pt"
    states = torch.load(states_file, weights_only=False)
    states["param_shapes"] = [
        {("x" if k == "0.embed.weight" else k): v for k, v in g.items()} for g in states["param_shapes"]
    ]
    torch.save(states, states_file)
    (step / "COMPLETE").write_text(json.dumps(ck.build_manifest(step, 1)))

    proc = run(
        [sys.executable, REPO / "launch/generate.py", out, "--prompt", "The", "--max-new-tokens", "2"], check=False
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: " + refusal("x"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
