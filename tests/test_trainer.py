"""The DeepSpeed trainer end to end through launch/train.py, on real gloo ranks.

One set of short runs serves several tests: ZeRO 1/2/3 on 2 ranks reproduce the single-process
stage-0 trajectory, a copy of a mid-run checkpoint resumes to the same losses, and the TensorBoard
events hold every scalar. The stage-0 and ZeRO-2 runs are conftest's reference runs, which
test_compile and test_tensor_parallel compare against too (trained once per session).
"""

import json
import math
import shutil
import sys

import pytest

from conftest import (
    REFERENCE_STEPS,
    REFERENCE_TRAIN,
    REPO,
    read_metrics,
    run,
    tiny_ngpt,
    torchrun,
    train_cmd,
    train_run,
    write_diverging_configs,
    write_ds_config,
    write_yaml,
)

STEPS = REFERENCE_STEPS
MODEL = tiny_ngpt()
TRAIN = REFERENCE_TRAIN


@pytest.fixture(scope="module")
def runs(tmp_path_factory, reference_runs):
    """name -> output dir of each finished run."""
    tmp = tmp_path_factory.mktemp("trainer")
    # Single process, ZeRO 0: the reference. Micro-batch 4 x 2 accumulation = the 2-rank global batch.
    outs = {name: reference_runs[name] for name in ("z0_ws1", "z2_ws2")}
    for stage in (1, 3):
        ds = write_ds_config(tmp / f"z{stage}.json", stage=stage, bf16=False, micro=4, accum=1)
        outs[f"z{stage}_ws2"] = tmp / f"z{stage}_ws2"
        train_run(reference_runs.config, ds, reference_runs.data, outs[f"z{stage}_ws2"], nproc=2)
    # Resume: a copy of z2's step-10 checkpoint, continued in a new directory.
    resumed = tmp / "z2_resumed"
    shutil.copytree(outs["z2_ws2"] / "checkpoints" / "step_00000010", resumed / "checkpoints" / "step_00000010")
    train_run(reference_runs.config, reference_runs.ds["z2_ws2"], reference_runs.data, resumed, nproc=2)
    outs["z2_resumed"] = resumed
    return outs


def losses(out_dir):
    return {m["step"]: m["train/loss"] for m in read_metrics(out_dir)}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_on_two_ranks_reproduce_single_process_stage0(runs, stage):
    reference, sharded = losses(runs["z0_ws1"]), losses(runs[f"z{stage}_ws2"])
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert [sharded[s] for s in range(1, STEPS + 1)] == pytest.approx(
        [reference[s] for s in range(1, STEPS + 1)], abs=2e-5
    )
    assert reference[STEPS] < reference[1] - 0.2  # it learns
    summary = json.loads((runs[f"z{stage}_ws2"] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == STEPS
    assert summary["tokens"] == STEPS * 8 * MODEL["seq_len"]


def test_resumed_run_reproduces_the_uninterrupted_losses_exactly(runs):
    uninterrupted, resumed = losses(runs["z2_ws2"]), losses(runs["z2_resumed"])
    assert sorted(resumed) == list(range(11, STEPS + 1))
    for step in range(11, STEPS + 1):
        assert resumed[step] == uninterrupted[step], step  # CPU fp32: bit-exact
    done = json.loads((runs["z2_resumed"] / "summary.json").read_text())
    assert done["val_loss"] == json.loads((runs["z2_ws2"] / "summary.json").read_text())["val_loss"]


def test_checkpoints_are_marked_complete_pruned_and_hold_the_config(runs):
    checkpoints = sorted(p.name for p in (runs["z3_ws2"] / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["step_00000010", "step_00000020"]
    for name in checkpoints:
        assert (runs["z3_ws2"] / "checkpoints" / name / "COMPLETE").is_file()
        assert "arch: ngpt" in (runs["z3_ws2"] / "checkpoints" / name / "config.yaml").read_text()


def test_tensorboard_holds_every_scalar(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["z2_ws2"] / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "train/loss",
        "eval/loss",
        "train/lr",
        "train/grad_norm",
        "throughput/tokens_per_s",
        "throughput/step_time_s",
        "throughput/mfu",
        "memory/rss_gib",
        "ngpt/s_z_mean",
        "ngpt/max_norm_deviation",
    }
    for layer in range(MODEL["n_layer"]):
        expected |= {
            f"ngpt/alpha_attn/layer_{layer:02d}",
            f"ngpt/alpha_mlp/layer_{layer:02d}",
            f"ngpt/s_qk/layer_{layer:02d}",
        }
    assert expected <= tags, expected - tags
    loss_events = events.Scalars("train/loss")
    assert [e.step for e in loss_events] == list(range(1, STEPS + 1))
    assert [e.value for e in loss_events] == pytest.approx(
        [losses(runs["z2_ws2"])[s] for s in range(1, STEPS + 1)], rel=1e-6
    )
    assert max(e.value for e in events.Scalars("ngpt/max_norm_deviation")) < 1e-5
    assert [e.step for e in events.Scalars("eval/loss")] == [10, 20]
    # No warmup, cosine to 0 (PAPER Table 3); train/lr is the LR each step applied: the peak at step 1, and at
    # the last step the cosine one step before its 0.
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(1e-2, rel=1e-6)
    assert lrs[-1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * (STEPS - 1) / STEPS)), rel=1e-5)
    alpha = events.Scalars("ngpt/alpha_attn/layer_00")
    assert 0.0 < alpha[-1].value < 1.0 and alpha[-1].value != pytest.approx(0.05, abs=1e-6)


def test_gpt_baseline_trains_through_the_same_trainer(tmp_path, tiny_dataset):
    config = write_yaml(
        tmp_path / "gpt.yaml",
        {**MODEL, "arch": "gpt"},
        {**TRAIN, "max_steps": 15, "lr": 3e-3, "checkpoint_interval": 0, "eval_interval": 0},
    )
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=True, micro=4, accum=1)
    train_run(config, ds, tiny_dataset, tmp_path / "out", forked=True)
    metrics = read_metrics(tmp_path / "out")
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"] - 0.25
    assert not any(k.startswith("ngpt/") for k in metrics[-1])
    # GPT warms up linearly from 0 (default warmup: max_steps // 10 = 1 step here): step 1 trains at LR 0,
    # then a cosine from the peak over the 14 steps left. train/lr is the LR each step applied.
    applied = [0.0] + [3e-3 * 0.5 * (1 + math.cos(math.pi * i / 14)) for i in range(14)]
    assert [m["step"] for m in metrics] == list(range(1, 16))
    assert [m["train/lr"] for m in metrics] == pytest.approx(applied, rel=1e-5, abs=1e-12)


def test_batch_size_mismatch_stops_before_any_compute(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", MODEL, TRAIN)
    ds = write_ds_config(tmp_path / "bad.json", stage=2, bf16=False, micro=4, accum=2, train_batch_size=16)
    proc = torchrun(*train_cmd(config, ds, tiny_dataset, tmp_path / "out"), nproc=1, check=False)
    assert proc.returncode != 0
    assert (
        "train_batch_size = 16, but train_micro_batch_size_per_gpu x gradient_accumulation_steps x "
        "data-parallel size = 4 x 2 x 1 = 8"
    ) in proc.stderr
    assert proc.stderr.startswith("error: DeepSpeed config")
    assert f'File "{REPO}' not in proc.stderr  # no traceback through our code (torchrun adds its own)
    assert not (tmp_path / "out").exists()


def test_resume_none_refuses_to_mix_with_existing_checkpoints(runs, reference_runs, tiny_dataset, tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", MODEL, TRAIN)
    proc = run(
        [
            sys.executable,
            *train_cmd(config, REPO / "ds_configs/zero0.json", tiny_dataset, runs["z0_ws1"], "--resume", "none"),
        ],
        check=False,
    )
    assert proc.returncode == 2
    assert "already holds checkpoints (newest: step_00000020)" in proc.stderr
    # --resume auto on a finished run does nothing and says so.
    proc = run(
        [sys.executable, *train_cmd(config, reference_runs.ds["z0_ws1"], tiny_dataset, runs["z0_ws1"])],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already trained to step 20/20: nothing to do" in proc.stdout + proc.stderr


def test_nan_loss_stops_with_the_step_and_saves_nothing_after_it(tmp_path, tiny_dataset):
    config, ds = write_diverging_configs(tmp_path, checkpoint_interval=3, eval_interval=0)
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, tmp_path / "out")], check=False)
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the training loss became nan at step ")
    failed_step = int(error.split("at step ")[1].split(";")[0])
    saved = sorted((tmp_path / "out" / "checkpoints").glob("step_*")) if failed_step > 3 else []
    assert all(int(p.name.split("_")[1]) < failed_step for p in saved)
    assert "lower train.lr (now 1e+30)" in error and "try fp32" not in error
