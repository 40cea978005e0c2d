"""Pipeline parallelism (train.pipeline_parallel_size) through the real trainer on gloo ranks: the same
losses as the run without pipelining, the hypersphere hook once per optimizer step on every stage,
exact resume, and the refusals."""

import json
import shutil
import sys

import pytest

from conftest import REPO, read_metrics, run, torchrun, write_ds_config, write_yaml

MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}
TRAIN = {
    "max_steps": 5,
    "lr": 1e-2,
    "log_interval": 1,
    "eval_interval": 0,
    "eval_batches": 2,
    "checkpoint_interval": 3,
    "peak_tflops": 1.0,
}


def _train(tmp_path, data, name, *, arch, nproc, ds, pipeline=1, script="launch/train.py", extra=()):
    config = write_yaml(
        tmp_path / f"{name}.yaml", {**MODEL, "arch": arch}, {**TRAIN, "pipeline_parallel_size": pipeline}
    )
    args = ["--config", config, "--deepspeed_config", ds, "--data", data, "--out", tmp_path / name, "--no-progress"]
    torchrun(REPO / script, *extra, *args, nproc=nproc)
    return read_metrics(tmp_path / name)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_pp2_reproduces_the_run_without_pipeline_bit_for_bit_and_resumes_exactly(tmp_path, tiny_dataset, arch):
    # bf16, ZeRO 1, 4 micro-batches per step: the schedule differs (DeepSpeed's pipeline), the numbers do not.
    ds = write_ds_config(tmp_path / "z1.json", stage=1, bf16=True, micro=2, accum=4)
    plain = _train(tmp_path, tiny_dataset, "plain", arch=arch, nproc=1, ds=ds)
    piped = _train(tmp_path, tiny_dataset, "pp2", arch=arch, nproc=2, ds=ds, pipeline=2)
    assert [m["step"] for m in piped] == [1, 2, 3, 4, 5]
    assert [m["train/loss"] for m in piped] == [m["train/loss"] for m in plain]
    # The gradient norm sums the stages' squares in another order: equal to rounding.
    assert [m["train/grad_norm"] for m in piped] == pytest.approx([m["train/grad_norm"] for m in plain], rel=1e-6)
    assert read_metrics(tmp_path / "pp2", "eval/loss")[-1]["eval/loss"] == pytest.approx(
        read_metrics(tmp_path / "plain", "eval/loss")[-1]["eval/loss"], abs=1e-6
    )
    step3 = tmp_path / "pp2" / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in step3.glob("layer_*")) == [f"layer_0{i}-model_states.pt" for i in range(4)]
    # A pipeline checkpoint loads into the plain model (generate, export, evaluate) with the same fp32 weights.
    from ngpt_ds.infer.loading import load

    from_plain, from_pipeline = load(tmp_path / "plain"), load(tmp_path / "pp2")
    assert from_pipeline.info["weights"].startswith("pipeline x2, fp32 master weights")
    # The provenance an export records: 2 ranks (the stages), not the 1 the data-parallel size alone gave.
    assert (from_pipeline.info["world_size"], from_plain.info["world_size"]) == (2, 1)
    plain_weights, piped_weights = from_plain.model.state_dict(), from_pipeline.model.state_dict()
    assert plain_weights.keys() == piped_weights.keys()
    # Bit for bit where no gradient was clipped (nGPT here); GPT's norm, above the clip of 1.0, scales the
    # gradients by a factor that differs in the last bit (the grad norm check above).
    worst = max((plain_weights[name] - piped_weights[name]).abs().max().item() for name in plain_weights)
    assert worst == 0.0 if arch == "ngpt" else worst < 1e-6
    if arch == "gpt":
        return
    # nGPT: every stage's health values reach rank 0's log; the masters of both stages are on the sphere.
    for key in ("ngpt/alpha_attn/layer_00", "ngpt/alpha_mlp/layer_01", "ngpt/s_z_mean"):
        assert [m[key] for m in piped] == [m[key] for m in plain]
    assert max(m["ngpt/max_norm_deviation"] for m in piped) < 1e-5
    # Resume from step 3 at the same layout: steps 4 and 5 as in the uninterrupted run.
    shutil.copytree(step3, tmp_path / "resumed" / "checkpoints" / step3.name)
    resumed = _train(tmp_path, tiny_dataset, "resumed", arch=arch, nproc=2, ds=ds, pipeline=2)
    assert [m["step"] for m in resumed] == [4, 5]
    assert [m["train/loss"] for m in resumed] == [m["train/loss"] for m in piped[3:]]
    # ... and refused at another number of stages, before any process group.
    one_stage = write_yaml(tmp_path / "one.yaml", {**MODEL, "arch": arch}, TRAIN)
    proc = run(
        [sys.executable, REPO / "launch/train.py", "--config", one_stage, "--deepspeed_config", ds]
        + ["--data", tiny_dataset, "--out", tmp_path / "other", "--resume", step3, "--no-progress"],
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "2 pipeline stages" in proc.stdout + proc.stderr
    assert "Resume with train.pipeline_parallel_size 2 on 2 rank(s)" in proc.stdout + proc.stderr


def test_pp2_dp2_zero1_matches_single_process_and_renormalizes_once_per_step(tmp_path, tiny_dataset):
    """4 ranks: 2 stages x 2 data-parallel replicas, fp32, ZeRO 1; the same global batch of 8 sequences."""
    single = _train(
        tmp_path,
        tiny_dataset,
        "single",
        arch="ngpt",
        nproc=1,
        ds=write_ds_config(tmp_path / "z1_single.json", stage=1, bf16=False, micro=2, accum=4),
    )
    watched = tmp_path / "watched"
    watched.mkdir()
    piped = _train(
        tmp_path,
        tiny_dataset,
        "pp2dp2",
        arch="ngpt",
        nproc=4,
        ds=write_ds_config(tmp_path / "z1_four.json", stage=1, bf16=False, micro=2, accum=2),
        pipeline=2,
        script="tests/workers/pp_worker.py",
        extra=(watched,),
    )
    assert [m["train/loss"] for m in piped] == pytest.approx([m["train/loss"] for m in single], abs=1e-5)
    assert [m["ngpt/s_z_mean"] for m in piped] == pytest.approx([m["ngpt/s_z_mean"] for m in single], abs=1e-5)
    assert max(m["ngpt/max_norm_deviation"] for m in piped) < 1e-5

    ranks = [json.loads((watched / f"rank{r}.json").read_text()) for r in range(4)]
    assert [r["stage"] for r in ranks] == [0, 0, 1, 1]  # stage-major: a stage's replicas are adjacent
    stage_matrices = [set(ranks[0]["matrices"]), set(ranks[2]["matrices"])]
    assert not stage_matrices[0] & stage_matrices[1]
    assert "0.embed.weight" in stage_matrices[0] and "3.head.weight" in stage_matrices[1]
    for rank, r in enumerate(ranks):
        replicas = [0, 1] if r["stage"] == 0 else [2, 3]
        assert len(r["steps"]) == 5
        for step in r["steps"]:
            # DeepSpeed's ZeRO-1 wrapper calls the torch optimizer's post-step hook once per parameter
            # group; the hook renormalizes each unit (the matrices' group) once, with one all-reduce
            # over this stage's data-parallel replicas only.
            assert step["calls"] == r["param_groups"] == 2
            assert step["renormalized"] == r["units"] == 1
            assert step["all_reduces"] == [replicas]
            assert step["stage_deviation"] < 1e-5, (rank, step)


def test_every_unsupported_pipeline_layout_is_named_at_once():
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.parallel.pipeline import check_pipeline

    with pytest.raises(NgptConfigError) as err:
        check_pipeline(
            2,
            world_size=3,
            zero_stage=0,
            n_layer=1,
            deepspeed_source="z0.json",
            tensor_parallel=2,
            sequence_parallel=2,
            precision="bf16",
        )
    message = str(err.value)
    assert "world size 3 is not divisible by train.pipeline_parallel_size = 2" in message
    assert "model.n_layer = 1 is below train.pipeline_parallel_size = 2" in message
    assert "z0.json sets zero_optimization.stage 0 with bf16: DeepSpeed cannot resume" in message
    assert "train.tensor_parallel_size = 2 with train.pipeline_parallel_size = 2 is not supported" in message
    assert "train.sequence_parallel_size = 2 with train.pipeline_parallel_size = 2 is not supported" in message
    with pytest.raises(NgptConfigError, match="z3.json sets zero_optimization.stage 3"):
        check_pipeline(2, world_size=2, zero_stage=3, n_layer=2, deepspeed_source="z3.json")
    check_pipeline(2, world_size=4, zero_stage=1, n_layer=2, deepspeed_source="z1.json", precision="bf16")
    check_pipeline(2, world_size=2, zero_stage=0, n_layer=2, deepspeed_source="z0.json")
