"""Cost: a resume at another data-parallel size read every per-parameter file of the universal checkpoint it had
just converted twice more before DeepSpeed's load: once hashed for its manifest (checkpoint.finish_universal), then
once again by universal_check (red34), which is there for a folder reused from an earlier run that whoever can write
it may have altered, and which a conversion made by this very process, sealed a moment before, cannot be. 12 bytes per
parameter (fp32 master and both Adam moments) parsed and scanned for NaN: an nGPT of 162.5M parameters (12 layers, d
768, vocab 32000), 1861 MiB in 444 files, took 11-16 s on one rank of a 2-core machine (5-6.6 s CPU), where the
manifest's hash of the same files took 3.8 s.

Now every rank remembers the folder's fingerprint once the conversion is sealed (ngpt_ds.train.verified_here's: the
manifest's digest and every file's inode, size, mtime and ctime), and the check is skipped when every rank finds the
folder as it was (used once). A folder reused from an earlier run, or changed since, is checked as before.

Each test is a real 2-rank gloo job running universal_check.check_on_all_ranks on a real conversion, counting the
files the check reads."""

from __future__ import annotations

import json
import shutil

import pytest

from ngpt_ds.train import checkpoint

from conftest import (
    convert_universal,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    train_run,
    write_ds_config,
    write_yaml,
)

HANG_GUARD_S = 120  # a hang guard only
SOURCE = "step_00000003"
UNIVERSAL = SOURCE + checkpoint.UNIVERSAL_SUFFIX
PARAM = "blocks.0.attn.qkv.weight"

RANK = r"""
import json, sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.factory import build_model
from ngpt_ds.train import manifest, universal_check

dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
folder, source, mode, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
shapes = universal_check.parameter_shapes(build_model(ModelConfig(**model)))
read = []
load = universal_check._load
universal_check._load = lambda path: (read.append(path), load(path))[1]  # counts, reads as before
if mode in ("converted", "altered"):
    universal_check.remember_conversion(folder)  # as reshape_convert.convert does once it sealed the folder
dist.barrier()
if mode == "altered" and dist.get_rank() == 0:  # one fp32 master altered, the manifest rebuilt to match
    path = folder / "zero" / "PARAM" / "fp32.pt"
    saved = torch.load(path, weights_only=True)
    saved["param"] = saved["param"].detach().clone()
    saved["param"][5, 7] = float("nan")
    torch.save(saved, path)
    old = manifest.read_manifest(folder)
    manifest.write_manifest(folder, {**old, "files": manifest.build_manifest(folder, old["step"])["files"]})
dist.barrier()
for attempt in (1, 2):
    read.clear()
    try:
        universal_check.check_on_all_ranks(folder, shapes, False, source)
        print(f"check {attempt}: passed, read {len(read)} file(s)", flush=True)
    except NgptConfigError as err:
        print(f"check {attempt}: refused, read {len(read)} file(s): {err}", flush=True)
dist.destroy_process_group()
from ngpt_ds.distributed import exit_process

exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
""".replace("PARAM", PARAM)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dataset):
    """A 1-rank ZeRO-2 run to step 3, and the universal conversion of step 3 (the converter child and the seal)."""
    root = tmp_path_factory.mktemp("univ35_converted_here")
    config = write_yaml(root / "run.yaml", tiny_ngpt(), tiny_train(3, checkpoint_interval=3))
    run = root / "run"
    ds = write_ds_config(root / "z2.json", stage=2, bf16=False, micro=2, accum=2)
    train_run(config, ds, tiny_dataset, run, forked=True)
    convert_universal(run / "checkpoints" / SOURCE, run / "checkpoints" / UNIVERSAL, timeout=HANG_GUARD_S)
    return run / "checkpoints"


def _reads(checkpoints) -> list[int]:
    """The files each of 2 ranks reads in a full check: its share of the per-parameter files (fp32, both moments and
    step of each parameter, one in two), the source's first optimizer shard (the step count), and on the last rank
    zero/optimizer_state.pt and that shard again (the optimizer state compared)."""
    files = 4 * len(list((checkpoints / UNIVERSAL / "zero").glob("*/fp32.pt")))
    return [len(range(rank, files, 2)) + (1 if rank == 0 else 3) for rank in range(2)]


def _check_on_two_ranks(made, mode: str, logs) -> list[list[str]]:
    """Each rank's two lines: the check run twice, after `mode` (converted: the folder remembered as converted here;
    reused: not; altered: remembered, then a file altered under a rebuilt manifest)."""
    model = {**tiny_ngpt(), "vocab_size": 512}
    args = ["-c", RANK, made / UNIVERSAL, made / SOURCE, mode, json.dumps(model)]
    ranks = start_ranks(args, nproc=2, logs=logs, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    try:
        codes = [rank.wait(timeout=HANG_GUARD_S) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    outputs = [(logs / f"rank{r}.log").read_text() for r in range(2)]
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return [[line for line in out.splitlines() if line.startswith("check ")] for out in outputs]


def test_a_folder_this_process_converted_is_not_read_again(made, tmp_path):
    lines = _check_on_two_ranks(made, "converted", tmp_path)
    # The first check trusts the seal; the memory is used once, so the second reads every file again.
    assert lines == [["check 1: passed, read 0 file(s)", f"check 2: passed, read {n} file(s)"] for n in _reads(made)]


def test_a_folder_reused_from_an_earlier_run_is_still_read(made, tmp_path):
    lines = _check_on_two_ranks(made, "reused", tmp_path)
    assert lines == [[f"check {i}: passed, read {n} file(s)" for i in (1, 2)] for n in _reads(made)]


def test_a_folder_changed_since_its_conversion_is_checked(made, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(made, checkpoints)
    lines = _check_on_two_ranks(checkpoints, "altered", tmp_path)
    path = checkpoints / UNIVERSAL / "zero" / PARAM / "fp32.pt"
    for got in lines:
        assert got[0].startswith("check 1: refused, read "), got
        assert got[0].endswith(
            f"{path} holds 1 non-finite value(s) (NaN or inf) (parameter {PARAM}, shape [96, 32]): the "
            f"universal checkpoint {UNIVERSAL} does not fit this model; it was altered or damaged after its conversion. "
            f"Remove {checkpoints / UNIVERSAL} and rerun: the trainer converts the checkpoint again"
        ), got
