"""The DeepSpeed JSON at startup: reading, the batch product, precision, and the blocks and values refused
before any engine starts (ngpt_ds.train.ds_config, ds_schema, ds_masters)."""

import json
import re
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import BatchPlan, check_ds_config, load_ds_config

from conftest import REPO, read_metrics, run, tiny_ngpt, tiny_train, train_cmd, write_yaml


def check(config, world=1, tp=1, fp16=False, bf16=True):
    return check_ds_config(
        config, world_size=world, tensor_parallel=tp, source="x.json", fp16_supported=fp16, bf16_supported=bf16
    )


def test_shipped_ds_configs_are_valid_for_one_and_two_ranks():
    for name in ("zero0", "zero1", "zero2", "zero3", "zero2_offload"):
        for world in (1, 2):
            config = load_ds_config(REPO / "ds_configs" / f"{name}.json")
            plan = check(config, world=world)
            assert config["train_batch_size"] == plan.global_batch == 8 * world
            assert config["bf16"]["enabled"] is True and config["gradient_clipping"] == 1.0


def test_batch_product_is_checked_with_the_numbers():
    with pytest.raises(
        NgptConfigError,
        match=r"train_batch_size = 32, but .* = 4 x 2 x 2 = 16 \(world size 4 / "
        r"tensor-parallel 2 = 2 data-parallel ranks\)",
    ):
        check(
            {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 32},
            world=4,
            tp=2,
        )
    config = {"train_micro_batch_size_per_gpu": 4, "train_batch_size": 32}
    assert check(config, world=2).grad_accum == 4  # derived like DeepSpeed does
    with pytest.raises(NgptConfigError, match=r"not a multiple of .* = 4 x 3 = 12"):
        check({"train_micro_batch_size_per_gpu": 4, "train_batch_size": 32}, world=3)


def test_precision_and_forbidden_blocks_are_collected_into_one_error():
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "fp16": {"enabled": True},
        "optimizer": {"type": "Adam"},
        "zero_optimization": {"stage": 4},
    }
    with pytest.raises(NgptConfigError) as err:
        check(config)
    text = str(err.value)
    assert "3 problems" in text
    assert "optimizer = '{...}': remove it" in text
    assert "zero_optimization.stage = 4" in text
    assert "fp16.enabled = True: this device does not support fp16" in text


@pytest.mark.parametrize("factor", [0, -1.0, "2", True, float("inf")])
def test_a_gradient_predivide_factor_that_is_no_positive_number_is_refused(factor):
    """Fault: "prescale_gradients": true with "gradient_predivide_factor": 0 passed the startup checks and
    stopped every rank in DeepSpeed's own AssertionError traceback once the engine started."""
    config = {"train_micro_batch_size_per_gpu": 2, "prescale_gradients": True, "gradient_predivide_factor": factor}
    with pytest.raises(NgptConfigError, match=r"gradient_predivide_factor = .*: must be a number > 0"):
        check(config)
    check({**config, "gradient_predivide_factor": 2.0})  # a real factor is DeepSpeed's business


def test_malformed_and_duplicate_json_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 4,\n "bf16": {"enabled": tru}}')
    with pytest.raises(NgptConfigError, match=r"bad.json: not valid JSON at line 2"):
        load_ds_config(bad)
    dup = tmp_path / "dup.json"
    dup.write_text('{"train_micro_batch_size_per_gpu": 4, "train_micro_batch_size_per_gpu": 8}')
    with pytest.raises(NgptConfigError, match=r"train_micro_batch_size_per_gpu appear twice"):
        load_ds_config(dup)
    with pytest.raises(NgptConfigError, match=r"does not exist. The shipped ones are in ds_configs/"):
        load_ds_config(tmp_path / "nope.json")


def test_zero_optimization_given_as_a_switch_is_refused_before_the_engine():
    """Fault: `"zero_optimization": true` passed the startup checks (the trainer read it as stage 0), DeepSpeed
    ran it as its deprecated form of stage 1, and the run stopped only after the engine had started:
    'the DeepSpeed engine reads the JSON differently from the trainer (zero_stage: DeepSpeed uses 1, the
    trainer assumed 0)'."""
    with pytest.raises(NgptConfigError) as err:
        check({"train_micro_batch_size_per_gpu": 4, "zero_optimization": True})
    assert str(err.value) == (
        "DeepSpeed config x.json: 1 problem\n  - zero_optimization = True: must be a JSON object with the "
        'stage, e.g. {"stage": 2} (DeepSpeed reads true as stage 1, a deprecated form)'
    )


def test_zero_optimization_false_is_stage_0_as_before():
    """Fault: the refusal of `"zero_optimization": true` refused `false` too, which DeepSpeed and the trainer
    both read as stage 0: a run trained with it (exit 0, 'ZeRO stage 0' read back from the engine) stopped
    with exit 2 at its next start, a Slurm requeue included, though nothing was read differently."""
    from deepspeed.runtime.zero.config import get_zero_config

    from ngpt_ds.train.ds_config import zero_stage_of

    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": False}
    assert check(dict(config)) == BatchPlan(micro_batch=4, grad_accum=1, data_parallel=1)
    assert zero_stage_of(config) == 0 == get_zero_config(config).stage  # the trainer's plan and DeepSpeed's


def test_tensor_and_pipeline_sizes_in_the_json_that_contradict_the_yaml_are_refused():
    """Faults: `"pipeline": {"stages": 2}` with train.pipeline_parallel_size 1 trained on one stage without a
    word; `"tensor_parallel": {"autotp_size": 2}` turned on DeepSpeed's AutoTP over the trainer's own
    split and stopped in an AssertionError traceback inside deepspeed.initialize."""
    base = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1}}
    with pytest.raises(NgptConfigError) as err:
        check({**base, "pipeline": {"stages": 2}, "tensor_parallel": {"autotp_size": 2}}, world=2)
    assert str(err.value) == (
        "DeepSpeed config x.json: 2 problems\n"
        "  - tensor_parallel.autotp_size = 2: tensor parallelism is set in the YAML: train.tensor_parallel_size "
        "(now 1), and the trainer splits the layers itself; remove the key from the JSON\n"
        "  - pipeline.stages = 2: pipeline stages are set in the YAML: train.pipeline_parallel_size (now 1); "
        "remove the key from the JSON, or set the same value in the YAML"
    )
    for agreeing in ({"pipeline": {"stages": "auto"}}, {"tensor_parallel": {"autotp_size": 0}}):
        assert check({**base, **agreeing}, world=2).data_parallel == 2
    plan = check_ds_config(
        {**base, "pipeline": {"stages": 2}},
        world_size=2,
        tensor_parallel=1,
        pipeline_parallel=2,
        source="x.json",
        fp16_supported=False,
        bf16_supported=True,
    )
    assert plan.data_parallel == 1


def test_deepspeeds_activation_checkpointing_block_is_refused_for_the_yamls():
    """Fault: an `"activation_checkpointing": {"partition_activations": true, "cpu_checkpointing": true}` block
    (common in DeepSpeed configs) trained without a word and without either: the model checkpoints with
    torch.utils.checkpoint as train.activation_checkpointing says, never through deepspeed.checkpointing."""
    with pytest.raises(NgptConfigError) as err:
        check(
            {
                "train_micro_batch_size_per_gpu": 4,
                "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": True},
            }
        )
    assert str(err.value) == (
        "DeepSpeed config x.json: 1 problem\n  - activation_checkpointing = '{...}': remove it: activation "
        "checkpointing is set in the YAML train section (train.activation_checkpointing: none, blocks or "
        "{every_k: K}); DeepSpeed's block applies only to models that call deepspeed.checkpointing, which ngpt_ds "
        "does not"
    )


def test_a_deepspeed_activation_checkpointing_block_that_turns_everything_off_is_accepted():
    """Fault (in the refusal above, when it was new): the all-off block DeepSpeed's example configs carry asks
    for nothing, but was refused too, and so were the resumes of runs started with it (exit 2)."""
    off = {"partition_activations": False, "cpu_checkpointing": False, "number_checkpoints": None, "profile": False}
    assert check({"train_micro_batch_size_per_gpu": 4, "activation_checkpointing": off}).micro_batch == 4
    with pytest.raises(NgptConfigError, match=r"activation_checkpointing = '\{\.\.\.\}': remove it"):
        check({"train_micro_batch_size_per_gpu": 4, "activation_checkpointing": {**off, "number_checkpoints": 4}})


def test_offload_without_zero_force_ds_cpu_optimizer_trains_and_true_is_refused(tmp_path, tiny_dataset):
    """Fault: ZeRO-Offload without "zero_force_ds_cpu_optimizer": false (DeepSpeed's default is true) passed the
    startup checks, then deepspeed.initialize refused the trainer's own AdamW with a ZeRORuntimeException
    traceback on every rank, exit 1, after the process group had started. Left out, it is now set to false;
    true is refused in one line."""
    offload = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    }
    with pytest.raises(NgptConfigError, match=r"1 problem\n  - zero_force_ds_cpu_optimizer = True: must be false"):
        check({**offload, "zero_force_ds_cpu_optimizer": True})
    filled = dict(offload)
    check(filled)
    assert filled["zero_force_ds_cpu_optimizer"] is False
    plain = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}
    check(plain)
    assert "zero_force_ds_cpu_optimizer" not in plain  # no offload: the JSON as written
    # The trainer trains with it (it was the traceback above, exit 1) and records the value it used.
    ds = tmp_path / "offload.json"
    ds.write_text(json.dumps(offload))
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    out = tmp_path / "out"
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert "zero_force_ds_cpu_optimizer: false" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    "zero, field",
    [
        ({"stage": 0, "offload_optimizer": {"device": "cpu"}}, "zero_optimization.offload_optimizer.device = 'cpu'"),
        ({"stage": 2, "offload_param": {"device": "cpu"}}, "zero_optimization.offload_param.device = 'cpu'"),
    ],
)
def test_offload_at_a_stage_where_deepspeed_ignores_it_is_refused(zero, field):
    """Fault: DeepSpeed offloads the optimizer at stages 1-3 and the parameters at stage 3 only; below that the
    block was accepted and ignored without a word (the engine read back 'ZeRO stage 0, fp32' and trained with
    everything in accelerator memory)."""
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": zero, "zero_force_ds_cpu_optimizer": False}
    with pytest.raises(NgptConfigError, match=re.escape(field) + r": DeepSpeed offloads .* ignores the block at stage"):
        check(config)
    check({**config, "zero_optimization": {**zero, "stage": 3}})


def test_deepspeeds_torch_autocast_is_refused_for_the_bf16_block():
    """Fault: "torch_autocast": {"enabled": true} ran the forward in bf16 over fp32 weights while the trainer's
    startup line ('DeepSpeed engine (read back): ZeRO stage 2, fp32'), config.yaml and MFU peak said fp32 (the
    loss of the first step differed from fp32's: 6.2458 vs 6.2457 on the tiny run)."""
    config = {"train_micro_batch_size_per_gpu": 2, "torch_autocast": {"enabled": True, "dtype": "bfloat16"}}
    with pytest.raises(NgptConfigError, match=r"torch_autocast.enabled = True: the trainer sets precision by the bf16"):
        check(config)
    check({**config, "torch_autocast": {"enabled": False}})


@pytest.mark.parametrize(
    "block, fields, line",
    [
        (
            "data_types",
            {"grad_acum_dtype": "fp32"},
            "data_types.grad_acum_dtype = 'fp32': unknown field: DeepSpeed does not read it and would ignore it; "
            "did you mean 'grad_accum_dtype'?",
        ),
        (
            "checkpoint",
            {"tag_validation": "Warn", "use_node_local_storag": False},
            "checkpoint.use_node_local_storag = False: unknown field: DeepSpeed does not read it and would ignore it; "
            "did you mean 'use_node_local_storage'?",
        ),
        (
            "flops_profiler",
            {"enabled": False, "profile_stp": 3},
            "flops_profiler.profile_stp = 3: unknown field: DeepSpeed does not read it and would ignore it; "
            "did you mean 'profile_step'?",
        ),
    ],
)
def test_a_misspelt_field_of_a_block_deepspeed_reads_field_by_field_is_named(block, fields, line):
    """Fault: blocks that DeepSpeed reads with dict lookups rather than a pydantic model (data_types, checkpoint,
    flops_profiler, torch_autocast, ...) ignored a misspelt field without a word: "data_types":
    {"grad_acum_dtype": "fp32"} at ZeRO 1 with bf16 passed the startup checks and ran DeepSpeed's ZeRO optimizer
    instead of the BF16_Optimizer with fp32 gradient accumulation that the JSON asks for."""
    config = {"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}
    with pytest.raises(NgptConfigError) as err:
        check({**config, block: fields})
    assert str(err.value) == f"DeepSpeed config x.json: 1 problem\n  - {line}"
    spelt = {
        k.replace("acum", "accum").replace("storag", "storage").replace("stp", "step"): v for k, v in fields.items()
    }
    check({**config, block: spelt})  # the fields DeepSpeed reads pass


def test_the_shipped_deepspeed_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    """Fault: `--deepspeed_config ds_configs/zero2.json` (the README's command) resolved against the working
    directory only: a pip-installed ngpt_ds (no checkout) stopped with "DeepSpeed config ds_configs/zero2.json
    does not exist", exit 2, from every folder. The shipped copy is used when the folder has none; a file of that
    name in the folder still wins, and a name that is not shipped is still an error."""
    monkeypatch.chdir(tmp_path)
    shipped = load_ds_config("ds_configs/zero2.json")
    assert shipped == json.loads((REPO / "ds_configs/zero2.json").read_text())
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs/zero2.json").write_text('{"train_micro_batch_size_per_gpu": 3}')
    assert load_ds_config("ds_configs/zero2.json") == {"train_micro_batch_size_per_gpu": 3}
    with pytest.raises(NgptConfigError, match=r"DeepSpeed config ds_configs/zero9.json does not exist"):
        load_ds_config("ds_configs/zero9.json")


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32_unless_asked(monkeypatch):
    """Fault: on a CPU without AVX512/AMX (an AVX2 EPYC here) torch runs bf16 matmuls in a reference gemm: the
    README's main command (ds_configs/zero2.json enables bf16 for GPUs) took 10.7 s a step, 55 minutes for its
    300 steps, instead of 0.6 s in fp32. Such a CPU now trains in fp32 with one warning; NGPT_DS_CPU_BF16=1 keeps
    bf16, and a CPU with native bf16 or an fp32 JSON is left as written."""
    from ngpt_ds.train.ds_config import fall_back_from_slow_cpu_bf16, precision_of

    monkeypatch.delenv("NGPT_DS_CPU_BF16", raising=False)
    config = json.loads((REPO / "ds_configs/zero2.json").read_text())
    assert precision_of(config) == "bf16"
    said = fall_back_from_slow_cpu_bf16(config, "ds_configs/zero2.json", native=False)
    assert precision_of(config) == "fp32" and config["bf16"] == {"enabled": False}
    assert said is not None and said.startswith(
        "DeepSpeed config ds_configs/zero2.json enables bf16, but this CPU has no native bf16 matmul (AVX512 or AMX)"
    )
    for native, env in ((True, None), (False, "1")):
        if env:
            monkeypatch.setenv("NGPT_DS_CPU_BF16", env)
        kept = json.loads((REPO / "ds_configs/zero2.json").read_text())
        assert fall_back_from_slow_cpu_bf16(kept, "z2.json", native=native) is None and precision_of(kept) == "bf16"
    fp32 = {"bf16": {"enabled": False}}
    assert fall_back_from_slow_cpu_bf16(fp32, "fp32.json", native=False) is None and fp32 == {
        "bf16": {"enabled": False}
    }


DTYPES = "must be one of DeepSpeed's dtype names (torch.float16, fp16, float16, half, torch.float32, fp32, "


@pytest.mark.parametrize(
    "patch, line",
    [
        ({"steps_per_print": 0}, "steps_per_print = 0: must be a positive integer (DeepSpeed prints"),
        ({"steps_per_print": "10"}, "steps_per_print = '10': must be a positive integer (DeepSpeed prints"),
        ({"steps_per_print": 1e9}, "steps_per_print = 1000000000.0: must be a positive integer (DeepSpeed prints"),
        (
            {"prescale_gradients": True},
            "prescale_gradients = True: DeepSpeed does not support it at ZeRO stage 2 with reduce_scatter (its "
            'default): set "zero_optimization": {"reduce_scatter": false}, or remove prescale_gradients',
        ),
        (
            {"prescale_gradients": True, "zero_optimization": {"stage": 3, "reduce_scatter": True}},
            "prescale_gradients = True: DeepSpeed does not support it at ZeRO stage 3 with reduce_scatter",
        ),
        ({"data_types": {"grad_accum_dtype": "FP32"}}, f"data_types.grad_accum_dtype = 'FP32': {DTYPES}"),
        ({"data_types": {"grad_accum_dtype": "fp33"}}, f"data_types.grad_accum_dtype = 'fp33': {DTYPES}"),
        ({"data_types": {"grad_accum_dtype": 32}}, f"data_types.grad_accum_dtype = 32: {DTYPES}"),
        ({"gradient_clipping": float("inf")}, "gradient_clipping = inf: must be a finite number >= 0"),
        ({"gradient_clipping": 10**400}, "gradient_clipping = 1000"),
    ],
)
def test_deepspeed_values_its_engine_fails_on_are_refused_at_startup(patch, line):
    """Fault: these passed check_ds_config and --dry-run, then stopped every rank after the engine had started:
    steps_per_print 0 or "10" at the first step (ZeroDivisionError, TypeError); prescale_gradients at ZeRO 2/3
    with reduce_scatter in deepspeed.initialize (AssertionError); grad_accum_dtype "FP32", "fp33" or 32 there too
    (ValueError: not a valid DtypeEnum). gradient_clipping Infinity (JSON's 1e400) clipped nothing."""
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}, **patch}
    with pytest.raises(NgptConfigError) as err:
        check(config)
    assert str(err.value).startswith(f"DeepSpeed config x.json: 1 problem\n  - {line}"), str(err.value)


@pytest.mark.parametrize(
    "patch",
    [
        {"steps_per_print": 10},
        {"steps_per_print": None},
        {"prescale_gradients": True, "zero_optimization": {"stage": 1}},
        {"prescale_gradients": True, "zero_optimization": {"stage": 2, "reduce_scatter": False}},
        {"data_types": {"grad_accum_dtype": "fp32"}},
        {"data_types": {"grad_accum_dtype": "float"}},
        {"gradient_clipping": 0},
    ],
)
def test_deepspeed_values_its_engine_runs_pass(patch):
    check({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}, **patch})


@pytest.mark.parametrize(
    "zero, line",
    [
        (
            {"stage": 0, "cpu_offload": True},
            "zero_optimization.cpu_offload = True: DeepSpeed's old spelling, which the trainer does not check: write "
            '"offload_optimizer": {"device": "cpu"} in zero_optimization instead',
        ),
        (
            {"stage": 2, "cpu_offload": True},
            "zero_optimization.cpu_offload = True: DeepSpeed's old spelling, which the trainer does not check: write "
            '"offload_optimizer": {"device": "cpu"} in zero_optimization instead',
        ),
        (
            {"stage": 2, "cpu_offload_param": True},
            "zero_optimization.cpu_offload_param = True: DeepSpeed's old spelling, which the trainer does not check: "
            'write "offload_param": {"device": "cpu"} in zero_optimization instead',
        ),
    ],
)
def test_deepspeeds_old_offload_spellings_are_refused_naming_the_new_ones(zero, line):
    """Fault: DeepSpeed 0.19 still maps zero_optimization.cpu_offload and cpu_offload_param onto offload_optimizer
    and offload_param, past the trainer's offload checks: cpu_offload at ZeRO 0 stopped deepspeed.initialize in a
    ZeRORuntimeException (client optimizer under ZeRO-Offload), cpu_offload_param at ZeRO 2 was ignored."""
    with pytest.raises(NgptConfigError) as err:
        check({"train_micro_batch_size_per_gpu": 2, "zero_optimization": zero})
    assert str(err.value) == f"DeepSpeed config x.json: 1 problem\n  - {line}"
    old = next(key for key in zero if key != "stage")
    check({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {**zero, old: False}})  # false asks for nothing


@pytest.mark.parametrize(
    "block",
    [
        {"tensorboard": {"enabled": True}},
        {"tensorboard": {"enabled": True, "output_path": "/nonexistent/x"}},
        {"csv_monitor": {"enabled": True, "output_path": "/proc/x/"}},
        {"wandb": {"enabled": True}},
        {"comms_logger": {"enabled": True}},
    ],
)
def test_deepspeeds_monitors_are_refused_for_the_trainers_own_logs(block):
    """Fault: DeepSpeed's monitor blocks passed the startup checks; without an output_path they wrote
    DeepSpeedJobName/ into the working directory, outside --out, and csv_monitor at "/proc/x/" or wandb (not
    installed) stopped deepspeed.initialize (FileNotFoundError, ModuleNotFoundError) after the process group had
    started. The trainer logs TensorBoard and metrics.jsonl in --out itself."""
    (name,) = block
    with pytest.raises(NgptConfigError) as err:
        check({"train_micro_batch_size_per_gpu": 2, **block})
    assert str(err.value) == (
        f"DeepSpeed config x.json: 1 problem\n  - {name}.enabled = True: DeepSpeed's monitors are not supported: the "
        "trainer writes TensorBoard events to <out>/tensorboard and the same scalars to <out>/metrics.jsonl itself "
        '(README "Training"); remove the block'
    )
    check({"train_micro_batch_size_per_gpu": 2, name: {**block[name], "enabled": False}})  # off: asks for nothing
