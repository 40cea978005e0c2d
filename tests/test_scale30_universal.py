"""Resume at another layout through DeepSpeed's universal checkpoint, with real ranks and the real converter
(scale30; README "Resuming at another world size").

A 2-rank ZeRO-2 fp32 run saves step 3 and trains on to step 6: the uninterrupted reference.

- Interrupted conversion: a 1-rank resume from step 3 whose converter (DeepSpeed's ds_to_universal) is
  SIGKILLed halfway through, after its extraction wrote the fragments and before it sealed them; then one whose
  rank is SIGKILLed there. Neither leaves anything under the step_N-universal name (nothing is ever taken for a
  conversion), and the next run says the earlier one did not finish, converts from the beginning and continues
  as the reference does.
- Fault (scale30): a conversion interrupted after DeepSpeed's ds_to_universal had extracted every ZeRO fragment
  (its phase 1 of 3) started again from the beginning. The extraction is now sealed and the rerun goes on from
  merging it (ngpt_ds.train.reshape_fragments): a rank SIGKILLed right after the seal, its rerun reuses the
  fragments and continues as the reference does, optimizer state bit for bit.
- Another layout: the same checkpoint resumed at 1 rank at ZeRO 1 (the partition count changes, so it
  converts). The next 3 losses equal the reference's to one float32 ULP, the masters stay on the sphere to
  1e-6, and the step-6 checkpoint holds the reference's fp32 masters, AdamW's exp_avg and exp_avg_sq and step
  count (the optimizer state survived the conversion and the load, and evolved as the uninterrupted run's).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from ngpt_ds.train import checkpoint, reshape_fragments

from conftest import (
    cpu_env,
    read_metrics,
    run,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    train_cmd,
    train_run,
    write_ds_config,
    write_yaml,
)

STEPS, SAVED = 6, 3
HANG_GUARD_S = 240  # a hang guard only
SOURCE = f"step_{SAVED:08d}"
UNIVERSAL = SOURCE + checkpoint.UNIVERSAL_SUFFIX
WORK = UNIVERSAL + checkpoint.TEMP_SUFFIX


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("scale30_universal")
    config = write_yaml(
        root / "run.yaml", tiny_ngpt(), tiny_train(STEPS, checkpoint_interval=SAVED, keep_checkpoints=5)
    )
    # The same global batch of 4 windows on 2 ranks and on 1.
    ds = {
        "z2_dp2": write_ds_config(root / "z2_dp2.json", stage=2, bf16=False, micro=2, accum=1),
        "z2_dp1": write_ds_config(root / "z2_dp1.json", stage=2, bf16=False, micro=2, accum=2),
        "z1_dp1": write_ds_config(root / "z1_dp1.json", stage=1, bf16=False, micro=2, accum=2),
    }
    reference = root / "reference"
    train_run(config, ds["z2_dp2"], tiny_dataset, reference, nproc=2)
    return {"config": config, "ds": ds, "reference": reference, "data": tiny_dataset}


def _losses(out) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_metrics(out)}


def _assert_continues(out, reference) -> list[float]:
    """The losses after the saved step equal the reference's to one float32 ULP (the same global batch: one rank's
    accumulation of two halves and two ranks' average give the same float32 gradient; the logged mean rounds in
    another order), and the masters stay on the sphere to 1e-6. Returns the differences."""
    got, want = _losses(out), _losses(reference)
    assert sorted(got) == list(range(SAVED + 1, STEPS + 1)), sorted(got)
    diffs = []
    for step in range(SAVED + 1, STEPS + 1):
        diffs.append(abs(got[step] - want[step]))
        assert diffs[-1] <= np.spacing(np.float32(want[step])), (step, got[step], want[step])
    deviations = [m["ngpt/max_norm_deviation"] for m in read_metrics(out)]
    assert deviations and max(deviations) < 1e-6, deviations
    return diffs


def _converter(out) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ngpt_ds.train.reshape" in cmdline and str(out) in cmdline:
            return proc
    return None


HOLD = """import os, signal, sys
if "ngpt_ds.train.reshape" in sys.orig_argv:  # the converter child only, not the rank that starts it
    from ngpt_ds.train import reshape_fragments

    sealing = reshape_fragments.seal

    def seal(folder, source):
        if {before}:
            os.kill(os.getpid(), signal.SIGSTOP)  # the test kills the converter or its rank now
        sealing(folder, source)
        if not {before}:
            os.kill(os.getpid(), signal.SIGSTOP)

    reshape_fragments.seal = seal
"""
"""A sitecustomize for a resuming rank: its converter stops itself (SIGSTOP) once DeepSpeed's extraction has
written the ZeRO fragments, just before they are sealed (ngpt_ds.train.reshape_fragments.seal) or just after."""


def _held(tmp_path, *, before_the_seal: bool) -> dict[str, str]:
    """The environment additions (for start_ranks) under which the converter stops itself at its seal."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HOLD.format(before=before_the_seal))
    return {"PYTHONPATH": f"{site}{os.pathsep}{cpu_env()['PYTHONPATH']}"}


def _stopped_converter(rank, out, log) -> psutil.Process:
    """The resuming rank's converter once HOLD has stopped it, its first phase done: frozen there whatever the
    machine's speed. Returns it.

    Not a SIGSTOP the test sent when it saw the fragments folder, or the seal: the extraction writes its fragments
    and seals them in milliseconds, the conversion ends in a second, and a test process that did not run for
    that long (2 pytest-xdist workers on 2 cores) stopped a converter past its seal ('assert not ...
    EXTRACTED).exists()'), or saw it end ('assert converter.is_running() ...')."""
    deadline, proc = time.monotonic() + HANG_GUARD_S, None
    while proc is None or proc.status() != psutil.STATUS_STOPPED:
        assert rank.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        proc = proc or _converter(out)
        time.sleep(0.05)
    return proc


def _paused_halfway(rank, out, log) -> psutil.Process:
    """The converter stopped by HOLD before its seal: fragments written, not sealed."""
    fragments = out / "checkpoints" / WORK / "converted" / reshape_fragments.FRAGMENTS
    proc = _stopped_converter(rank, out, log)
    assert any(fragments.iterdir()) and not (fragments / reshape_fragments.EXTRACTED).exists()
    return proc


def _written(out) -> list[str]:
    work = out / "checkpoints" / WORK / "converted"
    return sorted(str(p.relative_to(work)) for p in work.rglob("*"))


def test_an_interrupted_conversion_is_never_taken_for_one_and_the_next_run_converts_and_continues(setup, tmp_path):
    config, data, reference = setup["config"], setup["data"], setup["reference"]
    source = reference / "checkpoints" / SOURCE
    ds = setup["ds"]["z2_dp1"]
    out = tmp_path / "resumed"
    out.mkdir()
    universal = out / "checkpoints" / UNIVERSAL
    before = _held(tmp_path, before_the_seal=True)

    # 1. The converter is SIGKILLed halfway (the out-of-memory killer's signal): the resume stops, naming it.
    (rank,) = start_ranks(train_cmd(config, ds, data, out, "--resume", source), nproc=1, logs=tmp_path, **before)
    try:
        converter = _paused_halfway(rank, out, tmp_path / "rank0.log")
        written = _written(out)
        assert "*** Done!" not in (out / "checkpoints" / WORK / "convert.log").read_text()
        converter.send_signal(signal.SIGKILL)
        assert rank.wait(timeout=HANG_GUARD_S) == 2
    finally:
        if rank.poll() is None:
            rank.kill()
    said = (tmp_path / "rank0.log").read_text()
    assert "could not convert" in said and "killed by SIGKILL" in said, said[-3000:]
    assert written and not universal.exists()
    assert not (out / "checkpoints" / WORK).exists()  # rank 0 removed what the converter left
    assert [p.name for p in checkpoint.complete_checkpoints(out / "checkpoints")] == []

    # 2. The resuming rank itself is SIGKILLed halfway through (a preemption): its converter dies with it, and the
    # half-written work folder is all that is left; it is never taken for a conversion.
    (rank,) = start_ranks(train_cmd(config, ds, data, out, "--resume", source), nproc=1, logs=tmp_path, **before)
    try:
        converter = _paused_halfway(rank, out, tmp_path / "rank0.log")
        written = _written(out)
        rank.send_signal(signal.SIGKILL)
        assert rank.wait(timeout=HANG_GUARD_S) == -signal.SIGKILL
        gone, alive = psutil.wait_procs([converter], timeout=HANG_GUARD_S)
        assert not alive
    finally:
        if rank.poll() is None:
            rank.kill()
    assert written and (out / "checkpoints" / WORK).is_dir() and not universal.exists()
    assert not (out / "checkpoints" / WORK / "converted" / "COMPLETE").exists()

    # 3. The next run says the earlier conversion did not finish, converts from the beginning, and continues as
    # the uninterrupted 2-rank run did.
    rerun = run([sys.executable, *train_cmd(config, ds, data, out, "--resume", source)])
    said = rerun.stdout + rerun.stderr
    assert "that did not finish" in said and "starts again from the beginning" in said, said[-3000:]
    assert "converted it once into the universal checkpoint" in said
    diffs = _assert_continues(out, reference)
    print(f"interrupted twice, then converted: entries written before the kill {len(written)}; loss diffs {diffs}")
    assert not (out / "checkpoints" / WORK).exists()


def _flat_optimizer_state(folder) -> dict[str, torch.Tensor]:
    """The fp32 masters, exp_avg and exp_avg_sq of a ZeRO-1/2 checkpoint, each as one flat vector per parameter
    group in parameter order (the ranks' partitions joined, the padding cut), and the step counts."""
    files = sorted(folder.glob("*_optim_states.pt"), key=lambda p: int(p.name.split("_")[3]))
    states = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
    model = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    sizes = [sum(int(np.prod(shape)) for shape in group.values()) for group in model["param_shapes"]]
    flat: dict[str, torch.Tensor] = {}
    for g, size in enumerate(sizes):
        flat[f"fp32/{g}"] = torch.cat([s["single_partition_of_fp32_groups"][g] for s in states])[:size]
        for key in ("exp_avg", "exp_avg_sq"):
            flat[f"{key}/{g}"] = torch.cat([s["base_optimizer_state"]["state"][g][key] for s in states])[:size]
        steps = {float(s["base_optimizer_state"]["state"][g]["step"]) for s in states}
        assert len(steps) == 1, steps  # every rank counted the same steps
        flat[f"step/{g}"] = torch.tensor(steps.pop())
    return flat


def test_a_zero2_run_of_2_ranks_resumes_at_zero1_on_1_rank_with_its_optimizer_state(setup, tmp_path):
    config, data, reference = setup["config"], setup["data"], setup["reference"]
    out = tmp_path / "z1_dp1"
    proc = train_run(config, setup["ds"]["z1_dp1"], data, out, "--resume", reference / "checkpoints" / SOURCE)
    assert "saved at data-parallel size 2 on data-parallel size 1 (ZeRO 1): converted it once" in proc.stdout
    diffs = _assert_continues(out, reference)

    ours = _flat_optimizer_state(out / "checkpoints" / f"step_{STEPS:08d}")
    theirs = _flat_optimizer_state(reference / "checkpoints" / f"step_{STEPS:08d}")
    assert sorted(ours) == sorted(theirs)
    worst = {}
    for key, want in theirs.items():
        got = ours[key]
        assert got.shape == want.shape, key
        worst[key] = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        # Bit for bit: the same float32 gradients (see _assert_continues) give the same AdamW updates.
        assert torch.equal(got, want), (key, worst[key])
    assert {float(theirs[k]) for k in theirs if k.startswith("step/")} == {float(STEPS)}
    print(f"ZeRO 2 x 2 ranks -> ZeRO 1 x 1 rank: loss diffs {diffs}; optimizer state relative diffs {worst}")


def test_a_zero2_run_of_2_data_parallel_ranks_resumes_at_sequence_parallel_2_on_the_same_ranks(setup, tmp_path):
    """Another split of the same 2 ranks: ZeRO partitions over the data x sequence ranks, 2 either way, so the
    checkpoint loads as it is (no conversion). The global batch stays 4 windows (SP2: micro 2 x accumulation 2,
    both ranks on the same windows); the gradients are the same sums in another order, so equal to 1e-6."""
    data, reference = setup["data"], setup["reference"]
    sp2 = write_yaml(
        tmp_path / "sp2.yaml",
        tiny_ngpt(),
        tiny_train(STEPS, checkpoint_interval=SAVED, keep_checkpoints=5, sequence_parallel_size=2),
    )
    ds = write_ds_config(tmp_path / "z2_sp2.json", stage=2, bf16=False, micro=2, accum=2)
    out = tmp_path / "sp2"
    proc = train_run(sp2, ds, data, out, "--resume", reference / "checkpoints" / SOURCE, nproc=2)
    assert "universal checkpoint" not in proc.stdout + proc.stderr
    got, want = _losses(out), _losses(reference)
    assert sorted(got) == list(range(SAVED + 1, STEPS + 1))
    loss_rel = [abs(got[s] - want[s]) / want[s] for s in sorted(got)]
    deviations = [m["ngpt/max_norm_deviation"] for m in read_metrics(out)]
    ours = _flat_optimizer_state(out / "checkpoints" / f"step_{STEPS:08d}")
    theirs = _flat_optimizer_state(reference / "checkpoints" / f"step_{STEPS:08d}")
    worst = {k: ((ours[k] - v).abs().max() / v.abs().max().clamp_min(1e-30)).item() for k, v in theirs.items()}
    print(f"ZeRO 2 DP2 -> SP2 on 2 ranks: loss rel {loss_rel}; deviations {deviations}; state rel {worst}")
    assert max(loss_rel) <= 1e-6 and max(deviations) < 1e-6
    assert max(worst.values()) <= 1e-6, worst
    assert {float(ours[k]) for k in ours if k.startswith("step/")} == {float(STEPS)}


def test_a_conversion_killed_after_its_extraction_goes_on_from_the_fragments(setup, tmp_path):
    config, data, reference = setup["config"], setup["data"], setup["reference"]
    source, ds, out = reference / "checkpoints" / SOURCE, setup["ds"]["z2_dp1"], tmp_path / "resumed"
    out.mkdir()
    sealed = out / "checkpoints" / WORK / "converted" / reshape_fragments.FRAGMENTS / reshape_fragments.EXTRACTED
    after = _held(tmp_path, before_the_seal=False)
    (rank,) = start_ranks(train_cmd(config, ds, data, out, "--resume", source), nproc=1, logs=tmp_path, **after)
    try:
        converter = _stopped_converter(rank, out, tmp_path / "rank0.log")
        assert sealed.is_file()
        rank.send_signal(signal.SIGKILL)
        assert rank.wait(timeout=HANG_GUARD_S) == -signal.SIGKILL
        psutil.wait_procs([converter], timeout=HANG_GUARD_S)
    finally:
        if rank.poll() is None:
            rank.kill()
    fragments = sealed.parent
    seal = json.loads(sealed.read_text())
    assert seal["files"] > 0 and seal["source"] == SOURCE
    assert not (out / "checkpoints" / (SOURCE + checkpoint.UNIVERSAL_SUFFIX)).exists()

    rerun = run([sys.executable, *train_cmd(config, ds, data, out, "--resume", source)])
    said = rerun.stdout + rerun.stderr
    assert "it had extracted every ZeRO fragment (sealed and checked), so the conversion goes on" in said, said[-3000:]
    assert "starts again from the beginning" not in said
    assert "converted it once into the universal checkpoint" in said
    diffs = _assert_continues(out, reference)
    ours = _flat_optimizer_state(out / "checkpoints" / f"step_{STEPS:08d}")
    theirs = _flat_optimizer_state(reference / "checkpoints" / f"step_{STEPS:08d}")
    unequal = [key for key in theirs if not (ours[key] == theirs[key]).all()]
    assert not unequal, unequal
    print(f"resumed from {seal['files']} sealed fragments ({seal['bytes']} bytes): loss diffs {diffs}")
    assert not fragments.exists() and not (out / "checkpoints" / WORK).exists()
