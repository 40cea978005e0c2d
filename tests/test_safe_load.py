"""Loading never runs code: a crafted pickle in any checkpoint file is refused by every entry point.

Each test plants a payload, an object whose `__reduce__` runs a shell command that creates a
marker file, in one file of a real checkpoint (a 2-rank ZeRO-2 fp32 run and a 2-rank ZeRO-3 bf16
run, 2 steps each, shared by the module). The file kinds: DeepSpeed's model states, a rank's
optimizer states, a ZeRO-3 model-state shard, and the trainer's client_state (stored inside the
model states). Every file kind goes through `launch/generate.py`; every other entry point
(export, evaluate, the lm-eval command line, `launch/train.py --resume auto` on 2 ranks) gets one
file kind. Each must exit 2 with one message naming the file and the refused type, print no
traceback, and leave no marker.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (
    REPO,
    cpu_env,
    free_port,
    run,
    run_launch,
    run_lm_eval,
    tiny_ngpt,
    tiny_train,
    torchrun,
    train_cmd,
    write_ds_config,
    write_yaml,
)

MODEL = tiny_ngpt()
TRAIN = tiny_train(2)
STEP_DIR = "step_00000002"
REFUSED_TYPE = f"{os.system.__module__}.system"  # how pickle names os.system: posix.system on Linux


class Payload:
    """Unpickling this runs `touch MARKER`: what a hostile checkpoint would do with a real command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _set(keys):
    def plant(states, payload):
        target = states
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = payload

    return plant


# kind -> (run, file in the checkpoint, where the payload goes)
KINDS = {
    "model_states": ("z2", "mp_rank_00_model_states.pt", _set(["ds_config", "note"])),
    "client_state": ("z2", "mp_rank_00_model_states.pt", _set(["rng", "note"])),
    "optim_states": ("z2", "zero_pp_rank_0_mp_rank_00_optim_states.pt", _set(["note"])),
    "zero3_shard": ("z3", "zero_pp_rank_1_mp_rank_00_model_states.pt", _set(["note"])),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset) -> dict:
    """name -> {out, config, ds, data}: a ZeRO-2 fp32 and a ZeRO-3 bf16 run on 2 ranks, 2 steps each."""
    tmp = tmp_path_factory.mktemp("safe_load")
    config = write_yaml(tmp / "tiny.yaml", MODEL, TRAIN)
    found = {}
    for name, stage, bf16 in (("z2", 2, False), ("z3", 3, True)):
        ds = write_ds_config(tmp / f"{name}.json", stage=stage, bf16=bf16, micro=4, accum=1)
        out = tmp / name
        torchrun(*train_cmd(config, ds, tiny_dataset, out), nproc=2)
        found[name] = {"out": out, "config": config, "ds": ds, "data": tiny_dataset}
    return found


def poisoned_run(runs, kind: str, dest: Path) -> tuple[Path, Path, Path]:
    """A copy of the run's checkpoint (as a run folder) with the payload in one file.
    Returns (run folder, poisoned file, marker path)."""
    name, filename, plant = KINDS[kind]
    source = runs[name]["out"] / "checkpoints" / STEP_DIR
    checkpoint = dest / "run" / "checkpoints" / STEP_DIR
    shutil.copytree(source, checkpoint)
    target = checkpoint / filename
    marker = dest / "MARKER"
    states = torch.load(target, map_location="cpu", weights_only=False)
    plant(states, Payload(marker))
    torch.save(states, target)
    assert not marker.exists()
    remark(checkpoint)
    return dest / "run", target, marker


def remark(checkpoint: Path) -> None:
    """Rewrite the COMPLETE marker to match the files, as whoever planted the payload would: the
    manifest guards against damage, not against a hostile sender."""
    from ngpt_ds.train import checkpoint as layout

    build = getattr(layout, "build_manifest", None)
    text = json.dumps(build(checkpoint, 2)) if build else "step 2\n"
    (checkpoint / layout.COMPLETE).write_text(text, encoding="utf-8")


def assert_refused(proc, target: Path, marker: Path) -> None:
    output = proc.stdout + proc.stderr
    assert not marker.exists(), "the payload ran: unpickling the checkpoint executed code"
    assert proc.returncode == 2, output[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, proc.stderr[-4000:]
    assert str(target) in errors[0] and REFUSED_TYPE in errors[0], errors[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_file_kind_is_refused_by_generate(runs, kind, tmp_path):
    """launch/generate.py forked from a process that imported torch (tests/forked_cli.py); the other entry
    points below run in fresh interpreters."""
    run_dir, target, marker = poisoned_run(runs, kind, tmp_path)
    proc = run_launch("generate.py", run_dir, "--prompt", "The", "--max-new-tokens", "2", "--greedy", check=False)
    assert_refused(proc, target, marker)


def test_export_refuses_a_poisoned_checkpoint(runs, tmp_path):
    run_dir, target, marker = poisoned_run(runs, "optim_states", tmp_path)
    proc = run([sys.executable, REPO / "launch/export.py", run_dir, "--out", tmp_path / "export"], check=False)
    assert_refused(proc, target, marker)
    assert not (tmp_path / "export").exists()


def test_evaluate_refuses_a_poisoned_checkpoint(runs, tmp_path):
    run_dir, target, marker = poisoned_run(runs, "zero3_shard", tmp_path)
    proc = run([sys.executable, REPO / "launch/evaluate.py", run_dir, "--multiples", "1"], check=False)
    assert_refused(proc, target, marker)


def test_lm_eval_command_refuses_a_poisoned_checkpoint(runs, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")
    run_dir, target, marker = poisoned_run(runs, "client_state", tmp_path)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "text.jsonl").write_text(json.dumps({"text": "The class statement defines a class."}) + "\n")
    (tasks / "ngpt_safe_rolling.yaml").write_text(
        f"task: ngpt_safe_rolling\ndataset_path: json\ntest_split: test\n"
        f"dataset_kwargs: {{data_files: {{test: {tasks / 'text.jsonl'}}}}}\n"
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list: [{metric: word_perplexity}]\n"
    )
    proc = run_lm_eval(run_dir, "ngpt_safe_rolling", tasks, tmp_path / "hf_cache", "--device", "cpu", check=False)
    assert_refused(proc, target, marker)


def test_resume_refuses_a_poisoned_checkpoint_on_every_rank(runs, tmp_path):
    """Rank 0 alone reads its optimizer states inside DeepSpeed, and the pre-load check hands this
    file (the second of three, sorted) to rank 1: both ranks must refuse, none left waiting in a
    collective. Through DeepSpeed's launcher, which exits with its ranks' status."""
    run_dir, target, marker = poisoned_run(runs, "optim_states", tmp_path)
    name = KINDS["optim_states"][0]
    proc = run(
        [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            free_port(),
            *train_cmd(
                runs[name]["config"],
                runs[name]["ds"],
                runs[name]["data"],
                run_dir,
                "--resume",
                "auto",
                "--max-steps",
                "3",
            ),
        ],
        check=False,
        timeout=300,
    )
    assert_refused(proc, target, marker)
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("error: ") and str(target) in line]
    assert len(refusals) == 2, proc.stderr[-4000:]  # both ranks refused: neither waits for the other
    assert not (run_dir / "checkpoints" / "step_00000003").exists()


def test_guard_forces_the_restricted_loader_on_deepspeed_and_allows_its_types(tmp_path):
    """Inside the guard a `torch.load(..., weights_only=False)`, as DeepSpeed calls it, is refused;
    DeepSpeed's allow-listed objects (fp16's DynamicLossScaler included: fp16 needs a GPU, so no
    saved file has it here) round-trip with their attributes; torch.load is restored afterwards."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from ngpt_ds import safe_load

    marker = tmp_path / "MARKER"
    torch.save({"module": {"w": torch.ones(2)}, "note": Payload(marker)}, tmp_path / "bad.pt")
    original = torch.load
    with safe_load.deepspeed_loads_are_safe():
        with pytest.raises(
            safe_load.UnsafeCheckpointError,
            match=re.escape(f"{tmp_path / 'bad.pt'} was refused: loading it needs {REFUSED_TYPE},"),
        ):
            torch.load(tmp_path / "bad.pt", map_location="cpu", weights_only=False)
    assert torch.load is original and torch.serialization.load is original
    assert not marker.exists()

    dynamic = DynamicLossScaler(
        init_scale=2.0**16,
        scale_window=500,
        min_scale=1.0,
        delayed_shift=2,
        consecutive_hysteresis=True,
        raise_error_at_min_scale=False,
        dtype=torch.float16,
    )
    states = {
        "loss_scaler": LossScaler(1),
        "dynamic": dynamic,
        "zero_stage": ZeroStageEnum.gradients,
        "param_slice_mappings": [{"w": fragment_address(numel=4, start=8)}],
        "w": torch.arange(3.0),
    }
    torch.save(states, tmp_path / "good.pt")
    with safe_load.deepspeed_loads_are_safe():
        back = torch.load(tmp_path / "good.pt", weights_only=False)
    assert vars(back["dynamic"]) == vars(dynamic) and back["dynamic"].dtype == torch.float16
    assert vars(back["loss_scaler"]) == vars(states["loss_scaler"])
    assert back["zero_stage"] is ZeroStageEnum.gradients
    assert back["param_slice_mappings"][0]["w"] == fragment_address(numel=4, start=8)
    assert torch.equal(back["w"], torch.arange(3.0))


def test_an_older_trainers_numpy_rng_state_is_refused_with_a_hint(tmp_path):
    """Before loading was restricted, the trainer saved numpy's RNG state as an array; such a
    checkpoint is refused (numpy's reconstruction functions stay off the allow-list) and the message
    says what it probably is."""
    import numpy as np

    from ngpt_ds import safe_load

    torch.save({"rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
    with pytest.raises(
        safe_load.UnsafeCheckpointError,
        match=r"old\.pt was refused: loading it needs numpy\..*"
        r"may be such an older checkpoint; it cannot be loaded safely",
    ):
        safe_load.load(tmp_path / "old.pt")


def expanded(numel: int) -> torch.Tensor:
    """One stored float viewed as `numel` elements (stride 0): a few bytes in a file."""
    return torch.zeros(1).as_strided((numel,), (0,))


def test_a_tensor_larger_than_its_stored_data_is_refused(tmp_path):
    """Fault: a pickle sets each tensor's shape and strides, so a stride-0 view of one stored element
    describes a tensor of 10^12 elements in a few bytes; it loaded, and the reader's first whole-tensor
    operation allocated it (see the next test). Refused at load, wherever it sits (nested, in an
    allow-listed object); views of a flat buffer and empty tensors, as DeepSpeed saves them, load."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from ngpt_ds import safe_load

    scaler = LossScaler(1)
    scaler.note = [{"deep": expanded(10**12)}]
    for name, states in {
        "module.pt": {"module": {"w": torch.ones(4), "extra": expanded(10**12)}},
        "scaler.pt": {"optimizer": {"loss_scaler": scaler}},
        "matrix.pt": {"w": torch.zeros(1).as_strided((10**6, 10**6), (0, 0))},
        "sparse.pt": {
            "w": torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), [], (10**12,), check_invariants=True)
        },
    }.items():
        torch.save(states, tmp_path / name)
        with pytest.raises(
            safe_load.UnsafeCheckpointError, match=re.escape(f"{tmp_path / name} was refused: it holds")
        ):
            safe_load.load(tmp_path / name)
    flat = torch.arange(12.0)
    torch.save(
        {"views": [flat[:4].view(2, 2), flat[4:]], "empty": torch.empty(0, 5), "step": torch.tensor(3)},
        tmp_path / "ok.pt",
    )
    back = safe_load.load(tmp_path / "ok.pt", mmap=True)
    assert torch.equal(back["views"][1], torch.arange(4.0, 12.0)) and back["step"].item() == 3


def generate_within_8_gib(run_dir: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """launch/generate.py on `run_dir` with 8 GiB of address space, where an allocation the old code made fails
    instead of running the machine out of memory: it must exit 2 without a traceback. The process and its
    `error: ` lines."""

    def limit_memory():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.run(
        [sys.executable, REPO / "launch/generate.py", run_dir, "--prompt", "The", "--max-new-tokens", "2"],
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_memory,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc, [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_an_expanded_tensor_in_a_checkpoint_is_refused_before_it_is_allocated(runs, tmp_path):
    """Fault: the fp32 partitions in a ZeRO-2 run's optimizer states replaced by stride-0 views of 10^11
    elements (the files stay ~270 kB): DeepSpeed's zero_to_fp32 concatenated them, allocating 8 bytes per
    element (a 10^8-element view took 2 GB; at sizes that fit, memory runs out before any message).
    Here the command runs with 8 GiB of address space, so the old code failed the allocation instead."""
    name = "z2"
    source = runs[name]["out"] / "checkpoints" / STEP_DIR
    checkpoint = tmp_path / "run" / "checkpoints" / STEP_DIR
    shutil.copytree(source, checkpoint)
    targets = sorted(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))
    for target in targets:
        states = torch.load(target, map_location="cpu", weights_only=False)
        states["optimizer_state_dict"]["single_partition_of_fp32_groups"][0] = expanded(10**11)
        torch.save(states, target)
    remark(checkpoint)
    proc, errors = generate_within_8_gib(tmp_path / "run")
    refused = [f"error: {t} was refused: it holds a tensor of shape (100000000000,) and strides (0,)" for t in targets]
    assert errors and errors[0].startswith(tuple(refused)), proc.stderr[-4000:]


def test_one_tensor_named_many_times_is_refused(tmp_path):
    """Fault: the pickle memoizes a tensor, so a list naming one 4 kB tensor 10^5 times costs a few bytes a
    name; it loaded, and a reader that materialises each element (torch.cat in zero_to_fp32) allocated
    10^5 times the data. All the names together may describe at most SHARED_FACTOR times the stored data
    (plus 1 MiB); a weight tied between two names, and views that split one flat buffer, load."""
    from ngpt_ds import safe_load

    part = torch.zeros(1024)
    torch.save({"groups": [part] * 10**5}, tmp_path / "many.pt")
    with pytest.raises(safe_load.UnsafeCheckpointError) as err:
        safe_load.load(tmp_path / "many.pt")
    assert str(err.value).startswith(
        f"{tmp_path / 'many.pt'} was refused: it holds tensors describing 409600000 bytes in all (the same data "
        "named many times) over 4096 bytes of data"
    )
    big = torch.arange(2.0**20)  # 4 MiB: beyond the slack, so the factor decides
    torch.save({"a": big, "b": big, "views": list(big.split(1024)), "flat": big}, tmp_path / "tied.pt")
    back = safe_load.load(tmp_path / "tied.pt", mmap=True)
    assert back["a"] is back["b"] and torch.equal(back["views"][3], torch.arange(3072.0, 4096.0))
    torch.save({"names": [big] * (safe_load.SHARED_FACTOR + 1)}, tmp_path / "five.pt")
    with pytest.raises(safe_load.UnsafeCheckpointError, match="tensors describing 20971520 bytes in all"):
        safe_load.load(tmp_path / "five.pt")


def test_a_partition_named_many_times_in_a_checkpoint_is_refused_before_it_is_allocated(runs, tmp_path):
    """Fault: each rank's fp32 partition list in a ZeRO-2 run's optimizer states replaced by one 128 kB
    partition named 10^5 times (the files grow to ~600 kB): DeepSpeed's zero_to_fp32 concatenated every
    element, 26 GB. Under the 8 GiB of address space here the old code reached 7.9 GB resident and ended with
    'DeepSpeed could not consolidate ... can't allocate memory'; without a limit the system runs out."""
    source = runs["z2"]["out"] / "checkpoints" / STEP_DIR
    checkpoint = tmp_path / "run" / "checkpoints" / STEP_DIR
    shutil.copytree(source, checkpoint)
    targets = sorted(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))
    for target in targets:
        states = torch.load(target, map_location="cpu", weights_only=False)
        groups = states["optimizer_state_dict"]["single_partition_of_fp32_groups"]
        states["optimizer_state_dict"]["single_partition_of_fp32_groups"] = [groups[0]] * 10**5
        torch.save(states, target)
    remark(checkpoint)
    proc, errors = generate_within_8_gib(tmp_path / "run")
    refused = [f"error: {t} was refused: it holds tensors describing 13107" for t in targets]
    assert errors and errors[0].startswith(tuple(refused)), proc.stderr[-4000:]


def _save_deflated(obj, path: Path) -> None:
    """torch.save `obj` to `path` with every record deflated (torch.save stores them uncompressed). The zip is
    written from a save into memory in 16 MiB pieces, deflated with zlib's run-length strategy: the same deflate records
    (the zeros pack ~1000:1 either way) for half the CPU time of zipfile's default on a GiB of zeros."""
    import io
    import zipfile
    import zlib
    from unittest import mock

    buffer = io.BytesIO()
    torch.save(obj, buffer)  # its records are archive/...; a save to `path` names them after the file, as here

    def run_length(*_):
        return zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)

    with (
        zipfile.ZipFile(buffer) as src,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst,
        mock.patch.object(zipfile, "_get_compressor", run_length),
    ):
        for info in src.infolist():
            with (
                src.open(info) as record,
                dst.open(
                    path.stem + "/" + info.filename.split("/", 1)[1],
                    "w",
                    force_zip64=info.file_size >= zipfile.ZIP64_LIMIT,
                ) as deflated,
            ):
                shutil.copyfileobj(record, deflated, 1 << 24)


def test_a_compressed_record_is_refused_before_it_is_inflated(tmp_path):
    """Fault: torch's reader inflates a deflated record into a buffer of the size the zip claims: a 262 kB
    file loaded as a 256 MiB tensor (zeros pack ~1000:1), as DeepSpeed's readers that do not memory-map
    load it (ds_to_universal, zero_to_fp32's model states). The memory-mapped check failed on it only by
    chance ('Trying to resize storage that is not resizable')."""
    from ngpt_ds import safe_load

    path = tmp_path / "bomb.pt"
    _save_deflated({"w": torch.zeros(2**26)}, path)
    assert path.stat().st_size < 300_000
    for mmap in (False, True):
        with pytest.raises(safe_load.UnsafeCheckpointError) as err:
            safe_load.load(path, mmap=mmap)
        message = str(err.value)
        assert message.startswith(f"{path} was refused: it holds a compressed record bomb/data/0 ("), message
        assert message.endswith(
            " bytes that inflate to 268435456), which torch.save of a model's or optimizer's tensors never writes "
            "and which would take far more memory than the file. This file was not written by the ngpt_ds trainer, "
            "or it was altered. Do not use it"
        ), message


def test_the_universal_converter_refuses_a_compressed_optimizer_shard(runs, tmp_path):
    """Fault: a resume at another data-parallel size runs DeepSpeed's ds_to_universal on the checkpoint before
    anything else reads it, and it loads the optimizer shards without memory-mapping: each rank's shard
    replaced by a deflated 1 GiB partition (~1.2 MB files) was inflated whole. The converter child
    (`python -m ngpt_ds.train.reshape SOURCE OUTPUT`, what the trainer starts) now exits naming the file.
    safe_load refuses any compressed record, whatever it inflates to: a 256 MiB partition here (~0.5 MB files),
    as in the test above; making two 1 GiB ones took 9.4 s of the test's CPU, a quarter of that now."""
    import zipfile

    source = tmp_path / "checkpoints" / STEP_DIR
    shutil.copytree(runs["z2"]["out"] / "checkpoints" / STEP_DIR, source)
    targets = sorted(source.glob("zero_pp_rank_*_optim_states.pt"))
    for target in targets:
        states = torch.load(target, map_location="cpu", weights_only=False)
        states["optimizer_state_dict"]["single_partition_of_fp32_groups"][0] = torch.zeros(2**26)
        _save_deflated(states, target)
        assert target.stat().st_size < 1_000_000 and zipfile.is_zipfile(target)
    proc = subprocess.run(
        [sys.executable, "-m", "ngpt_ds.train.reshape", source, tmp_path / "converted"],
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(
        rf"{re.escape(str(source))}/zero_pp_rank_\d_mp_rank_00_optim_states\.pt was refused: it holds a compressed "
        r"record zero_pp_rank_\d_mp_rank_00_optim_states/data/\d+ \(\d+ bytes that inflate to 268435456\)",
        proc.stderr,
    ), proc.stderr[-4000:]
