"""Resume at another world size (fault: a checkpoint resumed only at the data-parallel size and ZeRO
stage it was saved with: "DeepSpeed could not load the checkpoint ... Start a new run").

The trainer converts the checkpoint once into DeepSpeed's universal format (checkpoints/step_N-universal),
loads it at the new size, and continues with the same global batch: the next losses equal those of the
uninterrupted run at the original size (fp32, to one float32 ULP of the loss) and the fp32 masters stay on the sphere. What
DeepSpeed cannot convert (ZeRO-1/2 <-> ZeRO-3, a tensor-parallel checkpoint) is refused before any
compute with one message naming both setups.
"""

import json
import sys

import numpy as np
import pytest

from conftest import read_metrics, run, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()
TRAIN = tiny_train(9, checkpoint_interval=3, keep_checkpoints=5)
GLOBAL_BATCH = 4


def ds_for(tmp_path, stage, ranks):
    """The same global batch (4 windows per optimizer step) at 1 or 2 ranks."""
    micro = 2
    return write_ds_config(
        tmp_path / f"z{stage}_dp{ranks}.json",
        stage=stage,
        bf16=False,
        micro=micro,
        accum=GLOBAL_BATCH // (micro * ranks),
    )


def losses(out):
    return {m["step"]: m["train/loss"] for m in read_metrics(out)}


def assert_continues(resumed, reference, steps):
    """The same global batch of 4 windows: one rank accumulating 2 micro-batches computes g1/2 + g2/2 and two
    ranks average (g1 + g2)/2, the same float32 numbers (a sum of two, halved exactly), so the weights are
    bit-identical. The logged loss is the mean of the same two float32 micro-batch losses, rounded in another
    order (a float32 accumulation on one rank, a float64 mean over two): at most one float32 ULP apart.
    Measured: 0 or 2.4e-7 (half a ULP at 6.2) at every step; the bound had been 1e-4, 400 times wider."""
    got, want = losses(resumed), losses(reference)
    for step in steps:
        assert abs(got[step] - want[step]) <= np.spacing(np.float32(want[step])), (step, got[step], want[step])
    deviations = [m["ngpt/max_norm_deviation"] for m in read_metrics(resumed)]
    assert deviations and max(deviations) < 1e-5


def converted_line(proc):
    return [line for line in proc.stdout.splitlines() if "universal checkpoint" in line]


@pytest.fixture(scope="module")
def zero2_on_two_ranks(tmp_path_factory, tiny_dataset):
    """The config and the run folder of TRAIN at ZeRO 2 on 2 ranks (checkpoints at steps 3, 6, 9): one 2-rank run
    for the module, which its tests only resume from (each into a folder of its own) and never alter."""
    root = tmp_path_factory.mktemp("zero2_on_two_ranks")
    config = write_yaml(root / "run.yaml", MODEL, TRAIN)
    torchrun(*train_cmd(config, ds_for(root, 2, 2), tiny_dataset, root / "two"), nproc=2)
    return config, root / "two"


def test_zero2_resumes_from_2_ranks_on_1_and_from_1_rank_on_2(tmp_path, tiny_dataset, zero2_on_two_ranks):
    config, two = zero2_on_two_ranks
    one, back = tmp_path / "one", tmp_path / "back"

    # 2 ranks -> 1 rank: converted once into the resuming run's checkpoints, verified like any checkpoint.
    proc = torchrun(
        *train_cmd(
            config, ds_for(tmp_path, 2, 1), tiny_dataset, one, "--resume", two / "checkpoints" / "step_00000003"
        ),
        nproc=1,
    )
    universal = one / "checkpoints" / "step_00000003-universal"
    assert converted_line(proc) == [
        f"resuming step 3 saved at data-parallel size 2 on data-parallel size 1 (ZeRO 2): converted it once into "
        f"the universal checkpoint {universal}, loaded it and renormalized the sphere matrices"
    ]
    assert_continues(one, two, steps=(4, 5, 6, 7, 8, 9))
    # Never taken for a normal checkpoint (auto-resume and export see only step_N folders), and removed by
    # retention with its step once the run has newer checkpoints of its own.
    from ngpt_ds.train.checkpoint import complete_checkpoints

    assert [p.name for p in complete_checkpoints(one / "checkpoints")] == ["step_00000006", "step_00000009"]
    assert not universal.exists() and not list((one / "checkpoints").glob("*tmp*"))

    # 1 rank -> 2 ranks, from the 1-rank run's step 6: the 1-rank run is the uninterrupted reference.
    proc = torchrun(
        *train_cmd(
            config, ds_for(tmp_path, 2, 2), tiny_dataset, back, "--resume", one / "checkpoints" / "step_00000006"
        ),
        nproc=2,
    )
    assert len(converted_line(proc)) == 1 and "data-parallel size 1 on data-parallel size 2" in proc.stdout
    assert_continues(back, one, steps=(7, 8, 9))

    # ZeRO-2 -> ZeRO-3 cannot be converted by DeepSpeed: refused before any compute, both setups named.
    refused = run(
        [
            sys.executable,
            *train_cmd(
                config,
                ds_for(tmp_path, 3, 1),
                tiny_dataset,
                tmp_path / "z3",
                "--resume",
                two / "checkpoints" / "step_00000003",
            ),
        ],
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "error: cannot resume step_00000003 (saved at ZeRO stage 2, data-parallel size 2, tensor-parallel "
        "size 1) at ZeRO stage 3, data-parallel size 1, tensor-parallel size 1: DeepSpeed loads a ZeRO 1/2 checkpoint "
        "only into ZeRO 1/2"
    )
    assert "Traceback" not in refused.stderr and "step " not in refused.stdout


def test_zero3_resumes_from_2_ranks_on_1(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "run.yaml", MODEL, {**TRAIN, "max_steps": 6})
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun(*train_cmd(config, ds_for(tmp_path, 3, 2), tiny_dataset, two), nproc=2)
    proc = torchrun(
        *train_cmd(
            config, ds_for(tmp_path, 3, 1), tiny_dataset, one, "--resume", two / "checkpoints" / "step_00000003"
        ),
        nproc=1,
    )
    assert len(converted_line(proc)) == 1 and "(ZeRO 3)" in proc.stdout
    assert_continues(one, two, steps=(4, 5, 6))


def test_tensor_parallel_checkpoint_at_another_layout_is_refused(tmp_path, tiny_dataset):
    tp2 = write_yaml(tmp_path / "tp2.yaml", MODEL, {**TRAIN, "max_steps": 1, "tensor_parallel_size": 2})
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    torchrun(*train_cmd(tp2, ds, tiny_dataset, tmp_path / "tp"), nproc=2)
    # TP2 x DP1 -> TP1 x DP2: the same 2 ranks, another split.
    tp1 = write_yaml(tmp_path / "tp1.yaml", MODEL, {**TRAIN, "max_steps": 2})
    ds2 = write_ds_config(tmp_path / "z2_dp2.json", stage=2, bf16=False, micro=1, accum=1)
    refused = torchrun(*train_cmd(tp1, ds2, tiny_dataset, tmp_path / "tp", "--resume", "auto"), nproc=2, check=False)
    assert refused.returncode != 0
    assert (
        "error: cannot resume step_00000001 (saved at ZeRO stage 2, data-parallel size 1, tensor-parallel "
        "size 2) at ZeRO stage 2, data-parallel size 2, tensor-parallel size 1: a tensor-parallel checkpoint "
        "resumes only at the same tensor-parallel and data-parallel sizes"
    ) in refused.stderr
    assert "train.tensor_parallel_size 2 on 2 rank(s)" in refused.stderr
    # No traceback from the trainer (torchrun adds its own report of the ranks' exit codes).
    assert not [line for line in refused.stderr.splitlines() if line.strip().startswith("File ") and "ngpt_ds" in line]
    assert "step " not in refused.stdout  # refused before any compute


def test_a_conversion_is_sealed_reused_only_for_its_source_and_follows_its_step(tmp_path):
    """The step_N-universal folder: manifest-verified, tied to the exact checkpoint it came from,
    never a step_N checkpoint, moved aside by lineage with its step."""
    from ngpt_ds.train import checkpoint as ck
    from ngpt_ds.train import lineage
    from ngpt_ds.train.resume import resolve_resume

    checkpoints = tmp_path / "checkpoints"
    source = checkpoints / "step_00000003"
    source.mkdir(parents=True)
    (source / "config.yaml").write_text("model: {}\n")
    (source / "mp_rank_00_model_states.pt").write_bytes(b"source")
    (source / "COMPLETE").write_text(json.dumps(ck.build_manifest(source, 3)))
    target = checkpoints / ck.universal_name(source.name)
    converted = checkpoints / "work" / "converted"
    (converted / "zero" / "w").mkdir(parents=True)
    (converted / "zero" / "w" / "fp32.pt").write_bytes(b"weights")
    ck.finish_universal(converted, target, source)

    assert ck.verify(target) is None and ck.is_converted_from(target, source)
    assert json.loads((target / "COMPLETE").read_text())["converted_from"]["name"] == "step_00000003"
    assert ck.complete_checkpoints(checkpoints) == [source] and ck.universal_dirs(checkpoints) == [target]
    assert resolve_resume(tmp_path, str(target)) == source  # a conversion resumes through its step
    (target / "zero" / "w" / "fp32.pt").write_bytes(b"weightz")  # damaged: converted again
    assert not ck.is_converted_from(target, source)
    (target / "zero" / "w" / "fp32.pt").write_bytes(b"weights")
    assert ck.is_converted_from(target, source)
    (source / "COMPLETE").write_text(json.dumps({**ck.build_manifest(source, 3), "step": 3, "files": {}}))
    assert not ck.is_converted_from(target, source)  # another checkpoint under the same name

    # Resuming from step 2 moves step 3's conversion aside with step 3.
    moved = lineage.start_lineage(tmp_path, checkpoints / "step_00000002")
    assert "step_00000003, step_00000003-universal" in moved and ck.universal_dirs(checkpoints) == []


def _pipeline_checkpoint(folder):
    """The files deepspeed_files.saved_layout reads of a checkpoint of 2 pipeline stages x data-parallel 2, ZeRO 1
    (the names, and rank 0's model states with the sizes)."""
    import torch

    folder.mkdir(parents=True)
    states = {"ds_config": {"zero_optimization": {"stage": 1}}, "mp_world_size": 2, "dp_world_size": 2}
    torch.save(states, folder / "mp_rank_00_model_states.pt")
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    (folder / "layer_00-model_00-model_states.pt").write_bytes(b"")
    return folder


def test_a_pipeline_checkpoint_at_another_zero_stage_is_told_its_whole_layout(tmp_path):
    """The ZeRO-stage refusal came first and advised 'a ZeRO 1/2 DeepSpeed config (any data-parallel size there)':
    following it was refused again for the pipeline, and ZeRO 2 runs no pipeline at all."""
    import pytest

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train.reshape_plan import Layout, plan

    source = _pipeline_checkpoint(tmp_path / "checkpoints" / "step_00000004")
    with pytest.raises(NgptConfigError) as one_rank:
        plan(source, Layout(zero_stage=3, data_parallel=1, tensor_parallel=1), tmp_path)
    assert "any data-parallel size" not in str(one_rank.value)
    assert str(one_rank.value).endswith("Resume with train.pipeline_parallel_size 2 on 4 rank(s), at ZeRO stage 1")
    with pytest.raises(NgptConfigError) as same_ranks:
        plan(source, Layout(zero_stage=3, data_parallel=2, tensor_parallel=1, pipeline_parallel=2), tmp_path)
    assert "any data-parallel size" not in str(same_ranks.value)
    assert "Resume at ZeRO stage 1 (the same layout otherwise), or start a new run" in str(same_ranks.value)


def test_a_conversion_that_cannot_fit_is_refused_naming_the_space_it_needs(
    tmp_path, tiny_dataset, mount_tmpfs, zero2_on_two_ranks
):
    """Resuming at another data-parallel size on a filesystem too full for DeepSpeed's converter ended in its
    'basic_ios::clear: iostream error', advising to resume at the old ranks: never the free space."""
    config, two = zero2_on_two_ranks
    source = two / "checkpoints" / "step_00000003"
    small = mount_tmpfs(768 * 1024)
    refused = torchrun(
        *train_cmd(config, ds_for(tmp_path, 2, 1), tiny_dataset, small / "one", "--resume", source, "--max-steps", "6"),
        nproc=1,
        check=False,
    )
    assert refused.returncode != 0 and "(exitcode: 2)" in refused.stderr, refused.stderr[-2000:]
    assert "error: not enough free space to convert step_00000003 for data-parallel size 1: DeepSpeed's " in (
        refused.stderr
    )
    assert f"are free on the filesystem of {small / 'one' / 'checkpoints'}. " in refused.stderr
    assert "Free space there and rerun, or resume at ZeRO stage 2, data-parallel size 2" in refused.stderr
    assert "step " not in refused.stdout  # before any compute
