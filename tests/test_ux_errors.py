"""Messages a newcomer met with the wrong fix, or none: each names the mistake and the way out.

Faults found by the newcomer review (s17); each test fails on the code before its fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import cpu_has_native_bf16

from conftest import REPO, cpu_env, run_launch, tiny_ngpt, tiny_train, write_ds_config, write_yaml


def _dry_run(tmp_path, data, config, ds, *ranks) -> subprocess.CompletedProcess:
    """launch/train.py --dry-run [RANKS] from a user's shell: without NGPT_DS_CPU_BF16 (cpu_env sets it)."""
    env = cpu_env()
    env.pop("NGPT_DS_CPU_BF16")
    argv = ["--config", config, "--deepspeed_config", ds, "--data", data, "--out", tmp_path / "out", "--no-progress"]
    return run_launch("train.py", *argv, "--dry-run", *ranks, env=env, check=False)


def test_a_dry_run_for_other_machines_plans_the_json_precision_not_this_cpus(tmp_path, tiny_dataset):
    """Fault: `--dry-run 8` (GPUs planned from a login node) applied this CPU's precision: a bf16 JSON was
    planned in fp32 on a CPU without native bf16 (the memory of fp32 weights: ~26 GiB a rank instead of ~14
    for ngpt_0.5b at ZeRO 2), and fp16, which GPU ranks train in, was refused ("this device does not support
    fp16"). The plan is the JSON's; a note says what this machine itself would do."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    bf16 = _dry_run(tmp_path, tiny_dataset, config, REPO / "ds_configs/zero2.json", "2")
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    assert f"deepspeed ({REPO / 'ds_configs/zero2.json'}): ZeRO 2, bf16, gradient clipping 1.0;" in bf16.stdout
    note = (
        f"note: DeepSpeed config {REPO / 'ds_configs/zero2.json'} enables bf16, planned as bf16 for the ranks' "
        "machines; this CPU has no native bf16 matmul (AVX512 or AMX), so a run on this machine itself would "
        "train in fp32 (NGPT_DS_CPU_BF16=1 keeps bf16)\n"
    )
    assert (note in bf16.stdout + bf16.stderr) == (not cpu_has_native_bf16())
    assert "Training in fp32 instead" not in bf16.stdout + bf16.stderr

    fp16_json = tmp_path / "z2_fp16.json"
    fp16_json.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 4,
                "gradient_accumulation_steps": 1,
                "fp16": {"enabled": True},
                "zero_optimization": {"stage": 2},
            }
        )
    )
    fp16 = _dry_run(tmp_path, tiny_dataset, config, fp16_json, "2")
    assert fp16.returncode == 0, fp16.stderr[-3000:]
    assert f"deepspeed ({fp16_json}): ZeRO 2, fp16," in fp16.stdout
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and not get_accelerator().is_fp16_supported():  # as the child's
        assert (
            f"note: DeepSpeed config {fp16_json} enables fp16, which this CPU does not support: this plan is for "
            "the ranks' machines (GPUs), and a run on this machine itself would be refused\n"
        ) in fp16.stdout + fp16.stderr


def test_a_dry_run_for_other_machines_refuses_a_bf16_pipeline_at_zero_0_as_the_job_does(tmp_path, tiny_dataset):
    """Fault: the same fallback turned a pipeline at ZeRO 0 in bf16, which the GPU job refuses (DeepSpeed
    cannot resume its checkpoints), into fp32, and the dry run passed it."""
    config = write_yaml(tmp_path / "pp.yaml", tiny_ngpt(), tiny_train(2, pipeline_parallel_size=2))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=True, micro=4, accum=1)
    proc = _dry_run(tmp_path, tiny_dataset, config, ds, "2")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: pipeline parallelism: {ds} sets zero_optimization.stage 0 with bf16: DeepSpeed cannot resume the "
        'checkpoints of such a pipeline. Set "zero_optimization": {"stage": 1} in that file'
    ), proc.stderr[-3000:]


def test_bf16_and_fp16_both_enabled_on_a_cpu_is_named_as_the_conflict(tmp_path, tiny_dataset, monkeypatch):
    """Fault: on a CPU without native bf16 the fallback turned bf16 off first, so the run was refused with
    "this device does not support fp16 training ...; use bf16", which the file already enabled."""
    from ngpt_ds.train import ds_config

    monkeypatch.setattr(ds_config, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv("NGPT_DS_CPU_BF16", raising=False)
    config = {"bf16": {"enabled": True}, "fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}
    assert ds_config.fall_back_from_slow_cpu_bf16(config, "z2_both.json") is None
    with pytest.raises(NgptConfigError) as err:
        ds_config.check_ds_config(
            {**config, "train_micro_batch_size_per_gpu": 4},
            world_size=1,
            tensor_parallel=1,
            source="z2_both.json",
            fp16_supported=False,
            bf16_supported=True,
        )
    assert "fp16.enabled = True: bf16 and fp16 are both enabled; enable one" in str(err.value)
    assert "does not support fp16" not in str(err.value)


def test_a_file_given_as_the_dataset_folder_is_named_a_file(tmp_path, tiny_dataset):
    """Fault: `--data DATASET/meta.json` (or a corpus text file) said "data dir ... does not exist; prepare it
    with ...": the file exists, and preparing again is not the fix."""
    from ngpt_ds.data.shards import load_dataset_meta

    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(tiny_dataset / "meta.json")
    assert str(err.value) == (
        f"data dir {tiny_dataset / 'meta.json'} is a file, not a dataset folder: pass {tiny_dataset}"
    )
    text = tmp_path / "corpus.txt"
    text.write_text("some words\n")
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(text)
    assert str(err.value) == f"data dir {text} is a file, not a dataset folder: pass the folder that holds meta.json"


def test_a_dataset_folder_given_as_the_tokenizer_is_named_a_folder(tmp_path, tiny_dataset):
    """Fault: prepare_data.py --tokenizer DATASET_FOLDER said "file not found"."""
    from ngpt_ds.data.prepare import PrepareConfig

    corpus = tmp_path / "c.txt"
    corpus.write_text("words\n")
    config = PrepareConfig(inputs=(str(corpus),), out=tmp_path / "new", tokenizer=tiny_dataset)
    with pytest.raises(NgptConfigError) as err:
        config.validate()
    assert (
        f"--tokenizer = {str(tiny_dataset)!r}: is a folder, not a sentencepiece .model file; pass its "
        f"tokenizer.model ({tiny_dataset / 'tokenizer.model'})"
    ) in str(err.value)
    assert "file not found" not in str(err.value)


def test_a_run_whose_dataset_moved_is_told_one_fix_the_tokenizer(tmp_path):
    """Fault: generate/evaluate/export on a run whose dataset moved said both "prepare it with `python
    launch/prepare_data.py ...`" and "Pass the tokenizer.model": preparing again trains another tokenizer,
    which the recorded hash then refuses."""
    from ngpt_ds.infer.loading import _checkpoint_tokenizer

    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000004"
    for data_dir in (tmp_path / "moved", tmp_path):  # gone; a folder without meta.json
        run = {"data_dir": str(data_dir), "tokenizer_sha256": "ab" * 32}
        with pytest.raises(NgptConfigError) as err:
            _checkpoint_tokenizer(run, checkpoint, None)
        assert "prepare_data.py" not in str(err.value) and "prepare it" not in str(err.value), str(err.value)
        assert str(err.value).startswith(
            f"no tokenizer for {checkpoint}: its dataset {data_dir} (data_dir in {checkpoint / 'config.yaml'}) "
            "cannot be read: "
        )
        assert str(err.value).endswith(
            ". Pass the tokenizer.model the training data was prepared with (--tokenizer FILE)"
        )
    with pytest.raises(NgptConfigError) as err:
        _checkpoint_tokenizer({"data_dir": str(tmp_path / "moved")}, checkpoint, None)
    assert f"cannot be read: data dir {tmp_path / 'moved'} does not exist. Pass the tokenizer.model" in str(err.value)


def test_a_config_given_to_the_other_flag_is_sent_to_it(tmp_path):
    """Fault: a model/train YAML given to --deepspeed_config said only "not valid JSON at line 1, column 1",
    and a DeepSpeed JSON given to --config "unknown top-level section(s) ...; expected 'model:' and
    'train:'": neither said which flag the file is for."""
    from ngpt_ds.train.config import load_model_and_train
    from ngpt_ds.train.ds_config import load_ds_config

    yaml_file = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(yaml_file)
    assert str(err.value).startswith(f"{yaml_file}: not valid JSON at line 1, column 1: ")
    assert str(err.value).endswith(
        f". It is a model/train YAML config, not a DeepSpeed JSON: pass it with --config {yaml_file}, and give "
        "--deepspeed_config a DeepSpeed JSON such as ds_configs/zero2.json"
    )
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2},}')
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(broken)
    assert "--config" not in str(err.value)

    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=True, micro=4, accum=1)
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(ds))
    assert str(err.value) == (
        f"{ds} is a DeepSpeed config (it sets bf16, gradient_accumulation_steps, gradient_clipping, "
        "train_micro_batch_size_per_gpu, zero_optimization), not a model/train config: pass it with "
        f"--deepspeed_config {ds}, and give --config a preset such as ngpt_tiny or a YAML file with 'model:' "
        "and 'train:' sections"
    )


def test_a_vocabulary_tensor_parallelism_cannot_split_names_the_data_fix():
    """Fault: only "choose a tensor-parallel size that divides it": the vocabulary is the tokenizer's, and a
    new one (prepare_data.py --vocab-size) is the other way out."""
    from ngpt_ds.parallel import check_tensor_parallel

    with pytest.raises(NgptConfigError) as err:
        check_tensor_parallel(2, 2, n_head=2, vocab_size=301, mlp_width=64)
    assert str(err.value) == (
        "tensor parallelism: model.vocab_size = 301 is not divisible by train.tensor_parallel_size = 2 (the "
        "embeddings and output head split the vocabulary); choose a tensor-parallel size that divides it, or "
        "prepare the data again (launch/prepare_data.py) with a --vocab-size divisible by 2"
    )


def test_the_entrypoint_help_says_what_it_does():
    """Fault: launch/entrypoint.py --help printed only its example line."""
    proc = subprocess.run(
        [sys.executable, REPO / "launch/entrypoint.py", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith(
        "usage: entrypoint.py COMMAND [ARGS...]\n\nThe Docker image's entrypoint: run a command, pass stop signals "
        "on, and exit only when everything\nit started has ended.\n"
    )
    assert "passes SIGTERM, SIGINT and SIGHUP on to every process it started" in proc.stdout
    bare = subprocess.run([sys.executable, REPO / "launch/entrypoint.py"], capture_output=True, text=True, timeout=60)
    assert (bare.returncode, bare.stdout) == (2, "")
    assert (
        bare.stderr == "error: no command to run; usage: entrypoint.py COMMAND [ARGS...] (--help says what it does)\n"
    )
