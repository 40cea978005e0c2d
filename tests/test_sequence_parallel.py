"""Ulysses sequence parallelism on real gloo ranks: exact parity with the full sequence, the hypersphere
hook's group, the trainer against a single process (and its resume), and fast failure of bad layouts."""

import json
import shutil
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.parallel.sequence import SequenceLayout, check_sequence_parallel, deepspeed_config_for
from ngpt_ds.train.config import TrainConfig

from conftest import REPO, read_metrics, run, run_launch, torchrun, train_flags, write_ds_config, write_yaml

MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}
TRAIN = {
    "max_steps": 10,
    "lr": 1e-2,
    "log_interval": 1,
    "eval_interval": 5,
    "eval_batches": 2,
    "checkpoint_interval": 5,
    "peak_tflops": 1.0,
}


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp") / "exact.json"
    torchrun(REPO / "tests/workers/sp_worker.py", out, "exact", nproc=2)
    return json.loads(out.read_text())


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_sp2_reproduces_sp1_logits_loss_and_gradients(exact, arch):
    r = exact[arch]
    assert r["chunk_shape"] == [3, 16, 64]  # each rank holds half of the 32 positions
    assert r["logits_max_diff"] < 1e-6  # chunks at their absolute RoPE positions
    assert r["loss_diff"] < 1e-6  # every rank returns the full sequence's mean loss
    assert r["grad_max_diff"] < 1e-6  # summed over the sequence group: the full-sequence gradient
    assert r["grad_norm"] > 0.1  # the gradients compared are not vanishing


def test_hook_reduces_over_all_data_x_sequence_ranks_at_zero3(tmp_path):
    """ZeRO 3 partitions the masters over the data x sequence ranks (not the data-parallel ranks only);
    the hook's one all-reduce per step must span them, and the gathered masters stay unit norm."""
    out = tmp_path / "hook.json"
    torchrun(REPO / "tests/workers/sp_worker.py", out, "hook", "3", nproc=4)
    ranks = json.loads(out.read_text())["ranks"]
    assert [r["sp_ranks"] for r in ranks] == [[0, 1], [0, 1], [2, 3], [2, 3]]  # adjacent sequence ranks
    for r in ranks:
        assert r["calls_per_step"] == [[[0, 1, 2, 3]]] * 3
        assert max(r["deviations"]) < 1e-5


def _train(tmp_path, dataset, name, config, ds, nproc, out=None):
    out = out or tmp_path / name
    torchrun(
        REPO / "launch/train.py",
        "--config",
        config,
        "--deepspeed_config",
        ds,
        "--out",
        out,
        "--data",
        dataset,
        "--no-progress",
        nproc=nproc,
    )
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_dataset):
    """The 1-rank reference: global batch 8 (micro 4 x accumulation 2), fp32, ZeRO 2."""
    tmp = tmp_path_factory.mktemp("sp_single")
    # 4 validation batches of 4 on one rank are the 16 windows that 2 data-parallel ranks split into 2 each.
    config = write_yaml(tmp / "single.yaml", MODEL, {**TRAIN, "eval_batches": 4})
    ds = write_ds_config(tmp / "z2_1.json", stage=2, bf16=False, micro=4, accum=2)
    return _train(tmp, tiny_dataset, "a", config, ds, 1)


def _assert_same_training(ma, mb):
    assert [m["step"] for m in mb] == list(range(1, 11))
    assert [m["train/loss"] for m in mb] == pytest.approx([m["train/loss"] for m in ma], abs=1e-5)
    # Adam hides a uniform gradient scale in the losses; the gradient norm shows it.
    assert [m["train/grad_norm"] for m in mb] == pytest.approx([m["train/grad_norm"] for m in ma], rel=1e-4)
    assert max(m["ngpt/max_norm_deviation"] for m in mb) < 1e-5


@pytest.fixture(scope="module")
def sp2_dp2(tmp_path_factory, tiny_dataset):
    """SP2 x DP2 on 4 ranks, ZeRO 2, fp32: global batch 8 (micro 4 x 2 data-parallel ranks), checkpoints
    at steps 5 and 10. Returns (its config, its DeepSpeed config, its output folder)."""
    tmp = tmp_path_factory.mktemp("sp2_dp2")
    parallel = write_yaml(tmp / "sp.yaml", MODEL, {**TRAIN, "sequence_parallel_size": 2})
    ds4 = write_ds_config(tmp / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    return parallel, ds4, _train(tmp, tiny_dataset, "b", parallel, ds4, 4)


def test_sp2_dp2_zero2_trainer_reproduces_single_process_and_resumes_exactly(tmp_path, tiny_dataset, single, sp2_dp2):
    parallel, ds4, b = sp2_dp2
    ma, mb = read_metrics(single), read_metrics(b)
    _assert_same_training(ma, mb)
    ea, eb = read_metrics(single, "eval/loss"), read_metrics(b, "eval/loss")
    assert [m["eval/loss"] for m in eb] == pytest.approx([m["eval/loss"] for m in ea], abs=1e-5)
    config = (b / "config.yaml").read_text()
    assert "sequence_parallel_size: 2" in config and "sequence_parallel_size" not in config.split("deepspeed:")[1]
    # Stop at step 5 and resume with the same layout: the same losses as the uninterrupted run.
    step5 = b / "checkpoints" / "step_00000005"
    shutil.copytree(step5, tmp_path / "c" / "checkpoints" / "step_00000005")
    c = _train(tmp_path, tiny_dataset, "c", parallel, ds4, 4)
    mc = read_metrics(c)
    assert [m["step"] for m in mc] == list(range(6, 11))
    assert [m["train/loss"] for m in mc] == [m["train/loss"] for m in mb[5:]]


def test_sp2_dp2_checkpoint_resumes_at_sp2_dp1_through_the_universal_conversion(tmp_path, tiny_dataset, sp2_dp2):
    """Fault: a sequence-parallel checkpoint could not resume on another number of ranks. The mpu
    answered DeepSpeed's tensor-parallel size query with S, so every checkpoint recorded S tensor-parallel
    ranks and ds_to_universal refused it ("model-state file count 1 does not match ... tp_degree=2").
    ZeRO cuts the optimizer state over the data x sequence ranks (4 here, 2 after): the trainer converts."""
    from ngpt_ds.train import reshape_plan as reshape

    parallel, _, b = sp2_dp2
    step5 = b / "checkpoints" / "step_00000005"
    # The count compared is ZeRO's partition count, not the data-parallel size: SP1 x DP4 on 4 ranks
    # loads the checkpoint as it is; SP2 x DP1 on 2 ranks converts it.
    z2 = {"zero_optimization": {"stage": 2}}
    assert reshape.plan(step5, reshape.current_layout(z2, 4, 1, sequence_parallel=1), tmp_path) is None
    assert reshape.plan(step5, reshape.current_layout(z2, 2, 1, sequence_parallel=2), tmp_path) is not None

    ds2 = write_ds_config(tmp_path / "z2_dp1.json", stage=2, bf16=False, micro=4, accum=2)  # global batch 8
    proc = torchrun(
        REPO / "launch/train.py",
        "--config",
        parallel,
        "--deepspeed_config",
        ds2,
        "--out",
        tmp_path / "e",
        "--data",
        tiny_dataset,
        "--no-progress",
        "--resume",
        step5,
        nproc=2,
    )
    universal = tmp_path / "e" / "checkpoints" / "step_00000005-universal"
    assert [line for line in proc.stdout.splitlines() if "universal checkpoint" in line] == [
        "resuming step 5 saved at data-parallel size 2 x sequence-parallel size 2 on data-parallel size 1 x "
        f"sequence-parallel size 2 (ZeRO 2): converted it once into the universal checkpoint {universal}, loaded "
        "it and renormalized the sphere matrices"
    ]
    got, want = read_metrics(tmp_path / "e"), read_metrics(b)[5:]
    assert [m["step"] for m in got] == list(range(6, 11))
    assert [m["train/loss"] for m in got] == pytest.approx([m["train/loss"] for m in want], abs=1e-4)
    assert max(m["ngpt/max_norm_deviation"] for m in got) < 1e-5


def test_sp2_zero3_trainer_sets_reduce_scatter_false_and_reproduces_single_process(tmp_path, tiny_dataset, single):
    """With DeepSpeed's ZeRO-3 reduce-scatter the gradients come out 1/S too small (grad norm halved)."""
    parallel = write_yaml(tmp_path / "sp.yaml", MODEL, {**TRAIN, "sequence_parallel_size": 2})
    ds = write_ds_config(tmp_path / "z3.json", stage=3, bf16=False, micro=4, accum=2)
    d = _train(tmp_path, tiny_dataset, "d", parallel, ds, 2)
    _assert_same_training(read_metrics(single), read_metrics(d))
    saved = (d / "config.yaml").read_text().split("deepspeed:")[1]
    assert "reduce_scatter: false" in saved


def test_zero3_gets_reduce_scatter_false_with_a_note():
    ds = {"zero_optimization": {"stage": 3}}
    note = deepspeed_config_for(ds, 2)
    assert ds["zero_optimization"]["reduce_scatter"] is False
    assert "reduce_scatter to false" in note and "2x too small" in note
    assert deepspeed_config_for(ds, 2) is None  # already false: nothing to say
    for untouched, sp in (({"zero_optimization": {"stage": 2}}, 2), ({"zero_optimization": {"stage": 3}}, 1)):
        assert deepspeed_config_for(untouched, sp) is None and "reduce_scatter" not in untouched["zero_optimization"]


def test_layout_puts_the_ranks_of_a_sequence_side_by_side():
    layout = SequenceLayout(8, 4)
    assert layout.sequence_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.data_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.coordinates(6) == (1, 2)


def test_bad_sequence_parallel_layouts_are_named():
    with pytest.raises(NgptConfigError) as err:
        check_sequence_parallel(4, 6, n_head=6, seq_len=30, tensor_parallel=2, pipeline_parallel=2)
    text = str(err.value)
    for fragment in (
        "world size 6 is not divisible by train.sequence_parallel_size = 4",
        "model.n_head = 6 is not divisible",
        "model.seq_len = 30 is not divisible",
        "train.tensor_parallel_size = 2 with train.sequence_parallel_size = 4 is not supported",
        "train.pipeline_parallel_size = 2 with train.sequence_parallel_size = 4 is not supported",
    ):
        assert fragment in text
    check_sequence_parallel(2, 4, n_head=2, seq_len=32)  # fits: no error
    with pytest.raises(NgptConfigError, match=r"train.sequence_parallel_size = 0: must be a positive integer"):
        TrainConfig(sequence_parallel_size=0).resolve("ngpt").validate()


@pytest.mark.parametrize(
    "model, train, fragment",
    [
        ({**MODEL, "n_head": 3, "n_embd": 48}, {"sequence_parallel_size": 2}, "model.n_head = 3 is not divisible"),
        (MODEL, {"sequence_parallel_size": 2}, "world size 1 is not divisible by train.sequence_parallel_size = 2"),
    ],
    ids=["heads", "world"],
)
def test_bad_sequence_parallel_size_stops_at_startup(tmp_path, tiny_dataset, model, train, fragment):
    config = write_yaml(tmp_path / "bad.yaml", model, {"max_steps": 2, **train})
    flags = train_flags(config, REPO / "ds_configs/zero2.json", tiny_dataset, tmp_path / "out")
    proc = run_launch("train.py", *flags, check=False)  # forked: the imports done once (tests/forked_cli.py)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory, tiny_dataset):
    """tiny_dataset's corpus twice, half held out: a batch of 16 windows of 8193 tokens in each split."""
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("long_dataset")
    corpus = root / "corpus.jsonl"
    corpus.write_text(2 * (tiny_dataset.parent / "corpus.jsonl").read_text())
    tokenizer = tiny_dataset / "tokenizer.model"
    return prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=root / "data", tokenizer=tokenizer, val_fraction=0.5, workers=1, progress=False
        )
    )


def _dry_run(tmp_path, dataset, *args):
    """launch/train.py --dry-run of the 8k preset, forked (run_launch: the imports done once)."""
    return run_launch(
        "train.py",
        "--config",
        "ngpt_0.5b_8k",
        "--deepspeed_config",
        REPO / "ds_configs/zero2.json",
        "--data",
        dataset,
        "--out",
        tmp_path / "out",
        "--dry-run",
        *args,
        check=False,
    )


def test_dry_run_validates_the_8k_preset_for_8_ranks_without_training(tmp_path, long_dataset):
    proc = _dry_run(tmp_path, long_dataset, "8")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for fragment in (
        "context 8192",
        "parallel: tensor 1 x pipeline 1 x sequence 4 x data 2 = 8 rank(s)",
        "sequence-parallel groups (adjacent; one sample each): [0, 1, 2, 3] [4, 5, 6, 7]",
        "data-parallel groups (one chunk position each): [0, 4] [1, 5] [2, 6] [3, 7]",
        "ZeRO 2 partitions over 8 rank(s) (data x sequence)",
        "micro 8 x accumulation 1 x data-parallel 2 = 16 sequences = 131072 tokens per optimizer step",
        "each rank holds 2048 positions of each sequence, attention sees all 8192 positions of 4 heads",
        "optimizer state",
        "activations kept for the backward",
        "; compile on (the first step waits for it;",
    ):
        assert fragment in out, fragment
    assert not (tmp_path / "out").exists()
    # 6 ranks do not split into sequence groups of 4: the same refusal as a real start.
    proc = _dry_run(tmp_path, long_dataset, "6")
    assert proc.returncode == 2
    assert "world size 6 is not divisible by train.sequence_parallel_size = 4" in proc.stderr


def test_memory_estimate_partitions_and_splits_the_sequence():
    from ngpt_ds.model import ModelConfig, build_model
    from ngpt_ds.train.memory_plan import estimate_memory

    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=64).validate()
    n = sum(p.numel() for p in build_model(config).parameters())
    full = estimate_memory(config, micro_batch=1, precision="bf16", zero_stage=0, zero_ranks=1)
    assert (full.parameters, full.weights, full.gradients, full.optimizer) == (n, 2 * n, 2 * n, 12 * n)
    zero2 = estimate_memory(config, micro_batch=1, precision="bf16", zero_stage=2, zero_ranks=4)
    assert (zero2.weights, zero2.gradients, zero2.optimizer) == (2 * n, 2 * n // 4, 12 * n // 4)
    # Kept activations are per position (the attention core counted as a fused kernel keeps it), but for
    # the RoPE tables (shared by the sequences): SP2 halves one sequence's, less half the tables.
    rope = 2 * 64 * 16 * 2  # cos and signed sin [64 positions, head_dim 16] in bf16
    sp2 = estimate_memory(config, micro_batch=2, precision="bf16", zero_stage=0, zero_ranks=1, sequence_parallel=2)
    assert sp2.activations == full.activations - rope // 2
    half = estimate_memory(config, micro_batch=1, precision="bf16", zero_stage=0, zero_ranks=1, sequence_parallel=2)
    assert 0.5 * full.activations < half.activations < 0.6 * full.activations  # + per-sequence vectors (s_qk, ...)
    # Checkpointing every block keeps only each block's input [1, 64, 32] in bf16.
    ckpt = estimate_memory(config, micro_batch=1, precision="bf16", zero_stage=0, zero_ranks=1, checkpoint_every=1)
    assert ckpt.recompute > 0 and ckpt.activations + ckpt.recompute < full.activations
    assert full.activations - ckpt.activations > 2 * ckpt.recompute * 0.9 - 2 * 64 * 32 * 2  # both blocks' dropped


def test_bench_reports_plain_and_sequence_parallel_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    small = ["--seq-len", 64, "--layers", 1, "--embd", 32, "--heads", 2, "--batch", 2, "--vocab", 128]
    run([sys.executable, REPO / "bench/sequence_parallel.py", *small, "--rounds", 1, "--json", out], timeout=600)
    result = json.loads(out.read_text())
    assert (result["plain"]["ranks"], result["sp"]["ranks"]) == (1, 2)
    assert all(result[job]["step_s"] > 0 for job in ("plain", "sp"))
    # The same weights and batch: the sequence-parallel steps train the same model.
    assert result["sp"]["losses"] == pytest.approx(result["plain"]["losses"], abs=1e-5)
