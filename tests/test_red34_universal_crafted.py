"""Fault: a step_N-universal folder (the universal checkpoint a resume at another data-parallel size converts once
and reuses, README "Resuming at another world size") whose per-parameter file was altered, with its manifest
rebuilt to match, was loaded by DeepSpeed's load_universal as it was. On 2 gloo ranks resuming a 1-rank ZeRO-2
checkpoint: an fp32.pt of another shape stopped rank 0 with DeepSpeed's "AssertionError: Loading .../fp32.pt full
param numel 3104 != tensor slice numel 3072" (a traceback of 49 lines; rank 1 only said another rank died); a NaN
in fp32.pt trained a step and stopped on "the training loss became nan at step 4 ... lower train.lr"; an int64
exp_avg.pt was cast to float and trained on in silence (exit 0); a step.pt of another count stopped on
"AssertionError: Steps [tensor(3.), tensor(7.), ...] are not equal".

Now every rank checks the files against the model's parameters before DeepSpeed reads them
(ngpt_ds.train.universal_check), and every rank stops with exit 2 and one line naming the file and the parameter,
before any step. An untouched folder is still reused."""

from __future__ import annotations

import shutil

import pytest
import torch
from crafted_checkpoints import reseal

from ngpt_ds.train import checkpoint, universal_check

from conftest import (
    convert_universal,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    train_cmd,
    train_run,
    write_ds_config,
    write_yaml,
)

HANG_GUARD_S = 240  # a hang guard only
PARAM = "blocks.0.attn.qkv.weight"
UNIVERSAL = "step_00000003" + checkpoint.UNIVERSAL_SUFFIX


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dataset):
    """A 1-rank ZeRO-2 run to step 3 whose checkpoints/ also holds the universal conversion of step 3 the trainer
    makes to resume it on 2 ranks (the converter child and the trainer's seal, as reshape_convert runs them)."""
    root = tmp_path_factory.mktemp("red34_universal")
    config = write_yaml(root / "run.yaml", tiny_ngpt(), tiny_train(3, checkpoint_interval=3))
    write_ds_config(root / "z2_dp2.json", stage=2, bf16=False, micro=2, accum=1)
    run = root / "run"
    dp1 = write_ds_config(root / "z2_dp1.json", stage=2, bf16=False, micro=2, accum=2)
    train_run(config, dp1, tiny_dataset, run, forked=True)
    convert_universal(run / "checkpoints" / "step_00000003", run / "checkpoints" / UNIVERSAL, timeout=HANG_GUARD_S)
    return root


def _craft(universal, state: str, kind: str) -> None:
    """Alter zero/PARAM/<state>.pt, then rebuild the manifest as whoever altered it would."""
    path = universal / "zero" / PARAM / f"{state}.pt"
    saved = torch.load(path, weights_only=True)
    if kind == "longer":
        saved["param"] = torch.cat([saved["param"], saved["param"][:1]])
    elif kind == "nan":
        saved["param"] = saved["param"].clone()
        saved["param"][5, 7] = float("nan")
    elif kind == "int64":
        saved["param"] = (saved["param"] * 1000).to(torch.int64)
    elif kind == "count":
        saved = torch.tensor(7.0)
    torch.save(saved, path)
    reseal(universal)


def _resume_on_two_ranks(made, tmp_path, tiny_dataset):
    out = tmp_path / "out"
    ranks = start_ranks(
        train_cmd(made / "run.yaml", made / "z2_dp2.json", tiny_dataset, out, "--max-steps", "4"),
        nproc=2,
        logs=tmp_path,
    )
    try:
        codes = [rank.wait(timeout=HANG_GUARD_S) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    return codes, [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]


FAULTS = {
    "longer": ("fp32", "holds a tensor of shape [97, 32]"),
    "nan": ("fp32", "holds 1 non-finite value(s) (NaN or inf)"),
    "int64": ("exp_avg", "holds a torch.int64 tensor, not float32"),
    "count": ("step", "holds optimizer step 7, where the checkpoint it was converted from is at 3"),
}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_an_altered_universal_file_is_refused_on_every_rank_naming_it(made, tmp_path, tiny_dataset, kind):
    state, what = FAULTS[kind]
    shutil.copytree(made / "run", tmp_path / "out")
    universal = tmp_path / "out" / "checkpoints" / UNIVERSAL
    _craft(universal, state, kind)
    codes, logs = _resume_on_two_ranks(made, tmp_path, tiny_dataset)
    assert codes == [2, 2], logs[0][-3000:]
    path = universal / "zero" / PARAM / f"{state}.pt"
    want = (
        f"error: {path} {what} (parameter {PARAM}, shape [96, 32]): the universal checkpoint {UNIVERSAL} does not "
        f"fit this model; it was altered or damaged after its conversion. Remove {universal} and rerun: the trainer "
        "converts the checkpoint again"
    )
    for log in logs:
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert errors == [want], log[-3000:]
        assert "Traceback" not in log and "step      4/4" not in log
    assert not (tmp_path / "out" / "checkpoints" / "step_00000004").exists()


def test_an_untouched_universal_folder_is_still_reused(made, tmp_path, tiny_dataset):
    shutil.copytree(made / "run", tmp_path / "out")
    codes, logs = _resume_on_two_ranks(made, tmp_path, tiny_dataset)
    assert codes == [0, 0], logs[0][-3000:]
    assert "reused the universal checkpoint" in logs[0] and "step      4/4" in logs[0]


@pytest.mark.parametrize(
    ("saved", "want"),
    [
        (torch.zeros(12), None),
        (torch.zeros(13), "holds a tensor of shape [13], not the flat [12]"),
        (torch.zeros(3, 4), "holds a tensor of shape [3, 4], not the flat [12]"),
        (torch.full((12,), float("inf")), "holds 12 non-finite value(s) (NaN or inf)"),
        (torch.zeros(12, dtype=torch.bfloat16), "holds a torch.bfloat16 tensor, not float32"),
    ],
)
def test_zero3_files_are_flat_tensors_of_the_parameters_size(tmp_path, saved, want):
    """A ZeRO 3 conversion keeps each state as the flat tensor (DeepSpeed's merge_zero3_slices), and no step.pt."""
    for state in ("fp32", "exp_avg", "exp_avg_sq"):
        (tmp_path / "zero" / "w").mkdir(parents=True, exist_ok=True)
        torch.save(saved if state == "exp_avg" else torch.zeros(12), tmp_path / "zero" / "w" / f"{state}.pt")
    found = universal_check.problem(tmp_path, {"w": (3, 4)}, zero3=True, step=None)
    path = tmp_path / "zero" / "w" / "exp_avg.pt"
    assert found == (None if want is None else universal_check._message(tmp_path, path, "w", (3, 4), want))
