"""A resume whose global batch (micro-batch x accumulation x data-parallel ranks) does not divide the saved
data position, and the message for a split too small for one step.

Faults:
- a resume with another micro-batch or accumulation where the checkpoint's `windows_consumed` was not a
  whole number of the new micro-batches over all ranks, or lay past the new epoch's last whole step, was
  refused by the loader only after the DeepSpeed engine had started and loaded the checkpoint, with
  <out>/config.yaml already rewritten with the refused settings, and its advice ("resume with the
  checkpoint's dp_size * micro_batch_size") was wrong when only the accumulation had changed;
- one that it accepted (a whole number of micro-batches, not of steps: micro-batch 2 x accumulation 2 after
  one step of 2) ran every later step across two epochs: the step at an epoch's end took its first
  micro-batch from one epoch and its second from the next, and every step after it straddled too;
- the split-too-small message called micro-batch x accumulation `micro_batch_size` ("dp_size *
  micro_batch_size = 2 * 16 = 32" at micro-batch 4, accumulation 4), and advised more data or a smaller
  batch for the validation split too, where a larger --val-fraction is the fix.

Now the position is a window offset: the resumed steps take the next windows of the epoch while a whole
step fits, then the next epoch starts at its first window (ngpt_ds.data.loader's docstring).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_data_loader import TRAIN_SHARDS, T, window_starts, write_synthetic

from ngpt_ds.data.loader import TokenWindowLoader, epoch_order, validation_batches
from ngpt_ds.errors import NgptConfigError

from conftest import read_metrics, run_launch, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

SEED = 7


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("batch_shape") / "ds")  # 24 train windows, 11 validation


def ranks(data, size: int, micro: int, accum: int) -> list[TokenWindowLoader]:
    return [TokenWindowLoader(data, "train", T, micro, r, size, SEED, grad_accum=accum) for r in range(size)]


def step(loaders: list[TokenWindowLoader], accum: int) -> list[int]:
    """One optimizer step over every rank: the first token of each window, in slot order (micro-batch m of
    rank r holds slots m*G + r*micro ... of the step, G = ranks x micro)."""
    per_micro = [[ld.next_batch()[0][:, 0].tolist() for ld in loaders] for _ in range(accum)]
    return [w for micro in per_micro for rank in micro for w in rank]


def expected_steps(start: int, per_step: int, count: int, windows: int = 24) -> list[tuple[int, list[int]]]:
    """(epoch, windows) of `count` steps of `per_step` windows from slot `start` of epoch 0, computed from the
    permutations alone: steps while they fit in the epoch, later epochs from slot 0."""
    starts, out, epoch, at = window_starts(TRAIN_SHARDS), [], 0, start
    while len(out) < count:
        if at + per_step > windows:
            epoch, at = epoch + 1, 0
            continue
        order = epoch_order(SEED, epoch, windows)
        out.append((epoch, [starts[i] for i in order[at : at + per_step]]))
        at += per_step
    return out


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((1, 2, 1), (1, 4, 1)),  # micro-batch 2 -> 4
        ((1, 2, 1), (2, 2, 1)),  # another data-parallel size, another global batch
        ((1, 2, 1), (1, 2, 2)),  # accumulation only: micro-batches fit, steps do not (the straddling case)
        ((1, 2, 1), (2, 1, 2)),
        ((1, 2, 5), (1, 2, 1)),  # a smaller global batch: 10 -> 2
        ((1, 3, 1), (1, 5, 1)),  # 3 -> 5
        ((2, 2, 1), (1, 1, 5)),
    ],
)
def test_a_resume_with_another_global_batch_takes_the_next_windows_and_no_step_mixes_two_epochs(data, before, after):
    """(data-parallel size, micro-batch, accumulation) before and after the resume, one step before it."""
    old = ranks(data, *before)
    step(old, before[2])
    state = old[0].state_dict()
    assert all(ld.state_dict() == state for ld in old)
    new = ranks(data, *after)
    for ld in new:
        ld.load_state_dict(state)
    per_step = after[0] * after[1] * after[2]
    want = expected_steps(state["windows_consumed"], per_step, count=3 * 24 // per_step + 2)
    got = []
    for epoch, _ in want:
        assert [ld.epoch for ld in new] == [epoch] * len(new)  # the epoch of the step's first micro-batch ...
        got.append((epoch, step(new, after[2])))
    assert got == want  # ... is the epoch of all of them: each step's windows are those of one epoch


def test_the_accumulation_change_of_the_review_resumes_at_the_next_epoch(data):
    """The review's case: 10 steps of 2 windows (slot 20 of 24), resumed at accumulation 5 (10 per step): the
    old loader refused it ('resume with the checkpoint's dp_size * micro_batch_size', which had not changed);
    no step of 10 fits in the 4 windows left, so the resume starts epoch 1."""
    old = ranks(data, 1, 2, 1)[0]
    for _ in range(10):
        old.next_batch()
    new = ranks(data, 1, 2, 5)[0]
    new.load_state_dict(old.state_dict())
    assert (new.epoch, new.state_dict()["windows_consumed"]) == (1, 0)
    assert step([new], 5) == expected_steps(20, 10, 1)[0][1]


def test_a_resumed_run_resumed_again_continues_exactly(data):
    """The position after a resume with another batch is no multiple of the new one: saving and loading it
    at the new layout gives the very stream the first resume would have read on, across epoch ends."""
    old = ranks(data, 1, 3, 1)[0]
    old.next_batch()  # slot 3
    reference = ranks(data, 2, 1, 2)
    for ld in reference:
        ld.load_state_dict(old.state_dict())
    stream = [step(reference, 2) for _ in range(15)]  # 5 steps in epoch 0 (3 .. 23), 6 in each later one
    for cut in range(1, 13):
        first = ranks(data, 2, 1, 2)
        for ld in first:
            ld.load_state_dict(old.state_dict())
        for _ in range(cut):
            step(first, 2)
        again = ranks(data, 2, 1, 2)
        for ld in again:
            ld.load_state_dict(first[0].state_dict())
        assert [step(again, 2) for _ in range(15 - cut)] == stream[cut:], cut


def test_the_state_is_taken_between_optimizer_steps(data):
    ld = ranks(data, 1, 2, 3)[0]
    ld.next_batch()
    with pytest.raises(RuntimeError, match="after 1 of the step's 3 micro-batches: take it between optimizer steps"):
        ld.state_dict()


def test_too_few_windows_for_one_optimizer_step_names_micro_batch_accumulation_and_ranks(data):
    with pytest.raises(NgptConfigError) as e:
        TokenWindowLoader(data, "train", T, 4, 0, 2, SEED, grad_accum=4)
    assert str(e.value) == (
        f"dataset {data} split 'train' has 24 windows of seq_len+1 = 9 tokens, fewer than one optimizer step of "
        "data-parallel size x micro-batch x accumulation = 2 x 4 x 4 = 32 windows; use a smaller seq_len, "
        "micro-batch, accumulation or data-parallel size, or prepare more data"
    )


def test_too_few_validation_windows_advises_a_larger_validation_fraction(data):
    with pytest.raises(NgptConfigError) as e:
        validation_batches(data, T, micro_batch_size=4, dp_rank=0, dp_size=3)
    assert str(e.value) == (
        f"dataset {data} split 'validation' has 11 windows of seq_len+1 = 9 tokens, fewer than one validation "
        "batch of data-parallel size x micro-batch = 3 x 4 = 12 windows; prepare the data again with a larger "
        "--val-fraction (it was 0.1), or use a smaller seq_len, micro-batch or data-parallel size"
    )


# ---- the trainer ---------------------------------------------------------------------------------------------

MICRO, ACCUM = 20, 10  # after the resume: 200 windows per step, of the 595 of `small_dataset`'s epoch


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """A sixth of tiny_dataset's documents (595 training windows of 32 tokens, 64 validation ones, vocab 512):
    an epoch end within three steps of 200 windows, at a tenth of tiny_dataset's compute."""
    import json
    import pydoc_data.topics

    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("small_dataset")
    texts = list(pydoc_data.topics.topics.values())
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[: len(texts) // 6]))
    config = PrepareConfig(
        inputs=(str(root / "corpus.jsonl"),), out=root / "data", vocab_size=512, val_fraction=0.1, workers=1
    )
    config.progress = False
    return prepare_dataset(config)


def loader_state(checkpoint: Path) -> tuple[int, int]:
    saved = torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return saved["loader"]["epoch"], saved["loader"]["windows_consumed"]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]


def test_a_trainer_resumed_at_another_micro_batch_and_accumulation_continues_exactly(tmp_path, small_dataset):
    """One step at micro-batch 2 (slot 2 of the 595 windows), then micro-batch 20 x accumulation 10: the old
    trainer refused it (exit 2) after its engine had started and <out>/config.yaml said micro-batch 20. Now
    steps 2 and 3 take slots [2, 202) and [202, 402); a third step would end at 602, so step 4 takes slots
    [0, 200) of epoch 1. Resumed once to step 4 or twice (to step 3, at that epoch's start, then 4), the
    losses and weights are bit for bit the same."""
    model = tiny_ngpt()
    small = write_ds_config(tmp_path / "micro2.json", stage=0, bf16=False, micro=2, accum=1)
    large = write_ds_config(tmp_path / "micro20.json", stage=0, bf16=False, micro=MICRO, accum=ACCUM)
    first = tmp_path / "first"
    one = write_yaml(tmp_path / "one.yaml", model, tiny_train(1, min_lr=1e-2))
    run_launch("train.py", *train_flags(one, small, small_dataset, first))
    step1 = first / "checkpoints" / "step_00000001"
    assert loader_state(step1) == (0, 2)

    def resumed(name: str, *max_steps: int) -> Path:
        out = tmp_path / name
        shutil.copytree(first, out)
        for steps in max_steps:
            train = tiny_train(steps, min_lr=1e-2, checkpoint_interval=1, keep_checkpoints=5)  # the LR of any max_steps
            config = write_yaml(tmp_path / f"{name}{steps}.yaml", model, train)
            proc = run_launch("train.py", *train_flags(config, large, small_dataset, out))
            said = proc.stdout + proc.stderr
            changed = "changed since the checkpoint: global batch 2 -> 200 sequences per step"
            assert (changed in said) == (steps == max_steps[0]), said[-3000:]
        return out

    once, twice = resumed("once", 4), resumed("twice", 3, 4)
    checkpoints = once / "checkpoints"
    assert [loader_state(checkpoints / f"step_{s:08d}") for s in (2, 3, 4)] == [(0, 202), (1, 0), (1, 200)]
    assert loader_state(twice / "checkpoints" / "step_00000004") == (1, 200)
    losses = {out: [(m["step"], m["train/loss"]) for m in read_metrics(out)] for out in (once, twice)}
    assert [s for s, _ in losses[once]] == [1, 2, 3, 4]
    assert losses[once] == losses[twice]
    final = {out: weights(out / "checkpoints" / "step_00000004") for out in (once, twice)}
    assert final[once].keys() == final[twice].keys()
    assert all(torch.equal(final[once][k], final[twice][k]) for k in final[once])
    assert not all(torch.equal(final[once][k], weights(step1)[k]) for k in final[once])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
