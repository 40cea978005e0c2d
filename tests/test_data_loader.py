"""TokenWindowLoader and validation_batches on a synthetic dataset whose token ids are positions.

Token i of the split is the id i, so a window's first input id names it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ngpt_ds.data.loader import TokenWindowLoader, epoch_order, validation_batches
from ngpt_ds.data.shards import (
    FORMAT_VERSION,
    TOKENIZER_FILE,
    DatasetMeta,
    ShardMeta,
    SplitMeta,
    sha256_file,
    write_meta,
)
from ngpt_ds.errors import NgptConfigError

T = 8  # seq_len
# Three train shards: windows per shard = (n - 1) // T = 12, 5, 7 -> 24 windows.
TRAIN_SHARDS = (100, 41, 60)
VAL_SHARDS = (90,)  # 11 windows


def write_synthetic(root: Path, train=TRAIN_SHARDS, val=VAL_SHARDS) -> Path:
    root.mkdir(parents=True)
    (root / TOKENIZER_FILE).write_bytes(b"not parsed by the loader")
    splits = {}
    for name, sizes, base in (("train", train, 0), ("validation", val, 30_000)):
        shards, pos = [], base
        for k, n in enumerate(sizes):
            f = f"{name}_{k:06d}.bin"
            np.arange(pos, pos + n, dtype="<u2").tofile(root / f)
            shards.append(ShardMeta(file=f, tokens=n))
            pos += n
        splits[name] = SplitMeta(documents=len(sizes), tokens=sum(sizes), shards=tuple(shards))
    write_meta(
        DatasetMeta(
            data_dir=root,
            format_version=FORMAT_VERSION,
            vocab_size=65536,
            dtype="uint16",
            eos_id=2,
            tokenizer_path=TOKENIZER_FILE,
            tokenizer_sha256=sha256_file(root / TOKENIZER_FILE),
            tokenizer_origin="synthetic",
            splits=splits,
            val_fraction=0.1,
            source="synthetic",
            license="",
        ),
        root,
    )
    return root


def window_starts(sizes, base=0) -> list[int]:
    """First token id of every window, computed independently of the loader."""
    starts, pos = [], base
    for n in sizes:
        starts += [pos + j * T for j in range((n - 1) // T)]
        pos += n
    return starts


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("syn") / "ds")


def loader(data, rank=0, size=1, mbs=2, seed=7, split="train") -> TokenWindowLoader:
    return TokenWindowLoader(data, split, T, mbs, rank, size, seed)


def firsts(batch) -> list[int]:
    return batch[0][:, 0].tolist()


def test_windows_are_exact_token_slices_and_targets_shift_by_one(data):
    ld = loader(data)
    assert ld.windows_per_epoch == 24 and ld.batches_per_epoch == 12
    inputs, targets = ld.next_batch()
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape == (2, T)
    for row in range(2):
        s = int(inputs[row, 0])
        assert s in window_starts(TRAIN_SHARDS)
        assert inputs[row].tolist() == list(range(s, s + T))
        assert targets[row].tolist() == list(range(s + 1, s + T + 1))


def test_one_epoch_visits_every_window_once_then_reshuffles_deterministically(data):
    ld = loader(data)
    epoch0 = [s for _ in range(12) for s in firsts(ld.next_batch())]
    assert sorted(epoch0) == window_starts(TRAIN_SHARDS)
    assert ld.epoch == 1
    epoch1 = [s for _ in range(12) for s in firsts(ld.next_batch())]
    assert sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0
    again = loader(data)
    assert [s for _ in range(24) for s in firsts(again.next_batch())] == epoch0 + epoch1


def test_an_epochs_order_takes_4_bytes_per_window_and_is_the_published_permutation():
    """Fault: each rank held its epoch's order as numpy's int64 permutation, 8 bytes per window: 800 MB
    on every rank (6.4 GB per 8-GPU node) at 100M windows, 100B tokens at context 1024. The order is
    now uint32, and the same permutation, so checkpoints of earlier versions resume on the same batches."""
    import tracemalloc

    for windows in (1, 7, 1000, 123_457):
        expected = np.random.default_rng([11, 3]).permutation(windows)
        assert np.array_equal(epoch_order(11, 3, windows), expected)
    tracemalloc.start()
    order = epoch_order(0, 0, 2_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert order.dtype == np.uint32 and order.nbytes == 8_000_000
    assert peak < 8_000_000 + 100_000  # the order itself, and no int64 copy (16 MB)


def test_same_seed_same_batches_other_seed_other_batches(data):
    a, b, c = loader(data, seed=3), loader(data, seed=3), loader(data, seed=4)
    seq_a = [firsts(a.next_batch()) for _ in range(6)]
    assert seq_a == [firsts(b.next_batch()) for _ in range(6)]
    assert seq_a != [firsts(c.next_batch()) for _ in range(6)]
    # The iterator protocol gives the same stream.
    assert [firsts(x) for _, x in zip(range(6), iter(loader(data, seed=3)))] == seq_a


@pytest.mark.parametrize("dp_size,mbs", [(2, 3), (4, 2), (4, 1)])
def test_data_parallel_ranks_are_disjoint_and_cover_the_epoch(data, dp_size, mbs):
    ranks = [loader(data, rank=r, size=dp_size, mbs=mbs) for r in range(dp_size)]
    per_epoch = 24 // (dp_size * mbs)
    seen = [[s for _ in range(per_epoch) for s in firsts(ld.next_batch())] for ld in ranks]
    flat = [s for r in seen for s in r]
    assert len(flat) == len(set(flat)) == per_epoch * dp_size * mbs == 24
    assert sorted(flat) == window_starts(TRAIN_SHARDS)
    # Rank r's batch b is slot r of global batch b: the union equals one single-rank loader with G-sized batches.
    single = loader(data, mbs=dp_size * mbs)
    for b in range(per_epoch):
        glob = firsts(single.next_batch())
        assert [s for r in range(dp_size) for s in seen[r][b * mbs : (b + 1) * mbs]] == glob
    assert all(ld.epoch == 1 for ld in ranks)


def test_remainder_windows_are_dropped_per_epoch(data):
    ld = loader(data, size=1, mbs=5)  # 24 windows -> 4 batches of 5, 4 windows left out
    assert ld.batches_per_epoch == 4
    got = [s for _ in range(4) for s in firsts(ld.next_batch())]
    assert len(set(got)) == 20 and set(got) < set(window_starts(TRAIN_SHARDS)) and ld.epoch == 1


def test_resume_mid_epoch_and_across_epochs_gives_the_exact_next_batches(data):
    ref = loader(data, rank=1, size=2, mbs=2)
    stream = [ref.next_batch() for _ in range(15)]  # 6 batches per epoch: crosses two epoch ends
    for cut in (0, 4, 6, 9):
        run = loader(data, rank=1, size=2, mbs=2)
        for _ in range(cut):
            run.next_batch()
        state = json.loads(json.dumps(run.state_dict()))  # survives a JSON checkpoint
        assert all(type(v) is int for v in state.values())
        resumed = loader(data, rank=1, size=2, mbs=2)
        resumed.load_state_dict(state)
        assert resumed.epoch == cut // 6
        for want in stream[cut:]:
            got = resumed.next_batch()
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_resume_with_a_different_split_of_the_same_global_batch(data):
    old = loader(data, rank=0, size=2, mbs=2)
    old.next_batch(), old.next_batch()
    new = [loader(data, rank=r, size=4, mbs=1) for r in range(4)]
    for ld in new:
        ld.load_state_dict(old.state_dict())
    ref = loader(data, mbs=4)
    ref.next_batch(), ref.next_batch()
    assert [firsts(ld.next_batch())[0] for ld in new] == firsts(ref.next_batch())


def test_resume_rejects_state_from_another_run(data):
    state = loader(data).state_dict()
    with pytest.raises(NgptConfigError, match=r"seed = 7: this run has seed = 8"):
        loader(data, seed=8).load_state_dict(state)
    # Another global batch resumes (tests/test_resume_batch_shape.py); a position past the epoch cannot be one.
    with pytest.raises(
        NgptConfigError, match=r"windows_consumed = 24: must be an integer in \[0, windows_per_epoch = 24\)"
    ):
        loader(data, mbs=3).load_state_dict({**state, "windows_consumed": 24})


def test_too_few_windows_for_one_global_batch(data):
    with pytest.raises(NgptConfigError) as e:
        loader(data, size=4, mbs=7)
    assert str(e.value) == (
        f"dataset {data} split 'train' has 24 windows of seq_len+1 = 9 tokens, fewer than one optimizer step of "
        "data-parallel size x micro-batch x accumulation = 4 x 7 x 1 = 28 windows; use a smaller seq_len, "
        "micro-batch, accumulation or data-parallel size, or prepare more data"
    )
    with pytest.raises(NgptConfigError, match="dp_rank = 2: must be in"):
        loader(data, rank=2, size=2)


def test_too_few_windows_because_the_shards_are_shorter_than_a_window(tmp_path):
    """--shard-tokens below seq_len + 1 (an operator's slip) left every shard without a window: the error said
    '0 windows ... prepare more data', which never helps. It now names the shards as the cause and the fix."""
    data = write_synthetic(tmp_path / "d", train=(T,) * 30, val=(T,) * 10)
    with pytest.raises(NgptConfigError) as e:
        TokenWindowLoader(data, "train", T, 2, 0, 1, seed=0)
    assert str(e.value).endswith(
        "or prepare more data. Its 240 tokens would make 29 windows, but they lie in 30 shard(s) of at most 8 "
        "tokens and a window never crosses a shard: prepare it again with --shard-tokens well above 9 "
        "(default 100000000)"
    )
    with pytest.raises(
        NgptConfigError, match=r"has 0 windows .* Its 80 tokens would make 9 windows, but they lie in 10"
    ):
        validation_batches(data, T, micro_batch_size=2, dp_rank=0, dp_size=2)


def test_too_few_windows_in_too_few_tokens_does_not_blame_the_shards(data):
    with pytest.raises(NgptConfigError) as e:
        TokenWindowLoader(data, "train", T, 7, 0, 4, seed=0)
    assert str(e.value).endswith("or prepare more data")  # 201 tokens make 25 windows at most, not 28


def test_validation_batches_are_fixed_spread_and_disjoint(data):
    starts = window_starts(VAL_SHARDS, base=30_000)  # 11 windows
    first = validation_batches(data, T, micro_batch_size=2, dp_rank=0, dp_size=2)
    second = validation_batches(data, T, micro_batch_size=2, dp_rank=1, dp_size=2)
    assert len(first) == len(second) == 2  # 11 // 4
    got0 = [firsts(b) for b in first]
    got1 = [firsts(b) for b in second]
    # 8 of 11 windows, evenly spread: window k = floor(i * 11 / 8).
    chosen = [starts[i * 11 // 8] for i in range(8)]
    assert got0 == [chosen[0:2], chosen[4:6]] and got1 == [chosen[2:4], chosen[6:8]]
    assert [firsts(b) for b in first] == got0  # iterable again, same windows
    for inputs, targets in first:
        assert torch.equal(targets[:, :-1], inputs[:, 1:])
    limited = validation_batches(data, T, 2, 1, 2, max_batches=1)
    assert [firsts(b) for b in limited] == [[starts[5], starts[8]]]  # 4 of 11 windows: 0, 2, 5, 8; rank 1: 5, 8


def test_each_optimizer_step_sees_the_same_windows_at_any_data_parallel_size_across_epochs(data):
    """Fault: an epoch ended on a whole micro-batch over the ranks, not on a whole optimizer step, so
    at an epoch's end 1 rank x 2 accumulation steps trained on windows that 2 ranks x 1 step skipped
    (24 windows, 14 per step: the 2-rank job skips 10, the 1-rank job took 21 into its second step).
    The README's resume rule: step k trains on slots [k*S, (k+1)*S) of the epoch, S the global batch."""
    for per_step, layouts in ((14, [(2, 7, 1), (1, 7, 2)]), (18, [(2, 9, 1), (1, 9, 2), (1, 6, 3), (2, 3, 3)])):
        seen = []
        for size, mbs, accum in layouts:  # (data-parallel size, micro batch, accumulation steps)
            ranks = [TokenWindowLoader(data, "train", T, mbs, r, size, 7, grad_accum=accum) for r in range(size)]
            seen.append(
                [sorted(w for _ in range(accum) for ld in ranks for w in firsts(ld.next_batch())) for _ in range(4)]
            )  # 4 epochs of one step each
        assert all(s == seen[0] for s in seen[1:]), per_step
        assert all(len(step) == per_step for step in seen[0])
