"""Bad data and config files that passed the startup checks: each must give one clear error naming the
file and the fix, never a traceback or a silently wrong run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ngpt_ds.data.loader import TokenWindowLoader, validation_batches
from ngpt_ds.data.shard_check import add_hashes
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.config import load_model_and_train

from conftest import (
    REPO,
    cpu_env,
    run,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    train_two_nodes_on_their_own_data,
    without_shard_hashes,
    write_ds_config,
    write_yaml,
)

SEED = 1234
SEQ = 32  # tiny_ngpt's context
MICRO = 4


def copy_of(dataset: Path, tmp_path: Path, name: str = "data") -> Path:
    return Path(shutil.copytree(dataset, tmp_path / name))


def poison_first_batch(data: Path, offset: int, value: int) -> int:
    """Write `value` into token `offset` of the first window the seeded loader reads (step 1, rank 0);
    returns that token's position in train_000000.bin."""
    meta = load_dataset_meta(data)
    windows = (meta.splits["train"].shards[0].tokens - 1) // SEQ
    first = int(np.random.default_rng([SEED, 0]).permutation(windows)[0])
    position = first * SEQ + offset
    shard = np.memmap(data / "train_000000.bin", dtype="<u2", mode="r+")
    shard[position] = value
    shard.flush()
    del shard
    record_hashes_anew(data)
    return position


def record_hashes_anew(data: Path) -> None:
    """The shard hashes refuse a poisoned shard when the dataset is opened (tests/test_shard_integrity.py);
    record them anew, so that what is tested is the read's own id check (damage after the startup check)."""
    add_hashes(without_shard_hashes(data))


def test_a_token_id_beyond_the_vocabulary_is_named_by_the_loader(tiny_dataset, tmp_path):
    """Fault: a shard holding a token id >= vocab_size (bit rot, a hand-made or other-tokenizer shard of
    the right size passes every meta.json check) reached the model: an IndexError traceback deep inside
    F.embedding on one rank (the others: gloo's 'Connection closed by peer'), a device-side assert on
    a GPU. Now the read names the shard, the position and the id."""
    data = copy_of(tiny_dataset, tmp_path)
    position = poison_first_batch(data, 5, 600)
    loader = TokenWindowLoader(data, "train", SEQ, MICRO, 0, 1, SEED)
    with pytest.raises(NgptConfigError) as err:
        loader.next_batch()
    assert str(err.value) == (
        f"dataset {data}: shard train_000000.bin holds token id 600 at token {position}, but the "
        "vocabulary has 512 ids (meta.json vocab_size): the shard is corrupt or was not written with "
        f"this dataset's tokenizer; delete {data} and prepare it again"
    )
    # The validation windows are read by the same code.
    val = np.memmap(data / "validation_000000.bin", dtype="<u2", mode="r+")
    val[0] = 65535
    val.flush()
    del val
    record_hashes_anew(data)
    with pytest.raises(NgptConfigError, match="shard validation_000000.bin holds token id 65535 at token 0, "):
        next(iter(validation_batches(data, SEQ, MICRO, 0, 1)))


def test_a_token_id_beyond_the_vocabulary_stops_both_tensor_parallel_ranks(tiny_dataset, tmp_path):
    """Fault: with tensor_parallel_size 2, a token id >= vocab_size lies outside every rank's slice of the
    vocab-parallel embedding and loss, so it was looked up as a zero vector with a zero target logit: the
    GPT baseline trained on it silently to 'Done', exit status 0 (nGPT: 'the training loss became nan',
    hinting at the learning rate). Now both ranks (which read the same batch) stop, naming the shard."""
    data = copy_of(tiny_dataset, tmp_path)
    position = poison_first_batch(data, 5, 600)
    gpt = {**tiny_ngpt(), "arch": "gpt"}
    yaml = write_yaml(tmp_path / "tp2.yaml", gpt, tiny_train(3, seed=SEED, tensor_parallel_size=2))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=MICRO, accum=1)
    args = [REPO / "launch/train.py", "--config", yaml, "--deepspeed_config", ds, "--data", data]
    ranks = start_ranks([*args, "--out", tmp_path / "out", "--no-progress"])
    outputs = [rank.communicate(timeout=240) for rank in ranks]
    for rank, (stdout, stderr) in zip(ranks, outputs):
        assert rank.returncode == 2, stdout + stderr
        assert "Traceback" not in stdout + stderr and "step      1/3" not in stdout, stdout + stderr
        assert f"error: dataset {data}: shard train_000000.bin holds token id 600 at token {position}," in stderr


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("model: {n_layer: 2}\ntrain: {max_steps: 3}\non: true\n", "True", 3),
        ("model:\n  n_layer: 2\n  1: 4\n  foo: 3\n", "1", 3),
        ("model: {n_layer: 2}\ntrain:\n  max_steps: 3\n  no: 1\n", "False", 4),
        ("model: {n_layer: 2, null: 3}\n", "None", 1),
    ],
    ids=["top-level-on", "model-number", "train-no", "model-null"],
)
def test_a_yaml_key_that_is_not_a_name_is_named_with_its_line(tmp_path, text, key, line):
    """Fault: a YAML key that YAML 1.1 reads as a boolean, number or null (`on:`, `no:`, `1:`, `~:`)
    stopped the run with a TypeError traceback from sorting or joining the unknown keys."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert str(err.value) == (
        f"{path}: key {key} (line {line}) is not a name: YAML reads on/off/yes/no/true/false, numbers and "
        "~/null unquoted as values; quote the key, or correct it to a field name"
    )


def test_a_yaml_key_that_is_not_a_name_gives_one_line_from_the_command(tiny_dataset, tmp_path):
    """Fault: the same through launch/train.py --dry-run: a TypeError traceback, exit status 1."""
    yaml = tmp_path / "run.yaml"
    yaml.write_text(
        "model: {arch: ngpt, n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32}\ntrain: {max_steps: 3}\non: 1\n"
    )
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=MICRO, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", tiny_dataset, "--out", tmp_path / "o", "--dry-run"]
    proc = run([sys.executable, REPO / "launch/train.py", *argv], env=cpu_env(), check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"error: {yaml}: key True (line 3) is not a name: YAML reads on/off/yes/no/true/false, numbers and "
        "~/null unquoted as values; quote the key, or correct it to a field name\n"
    )


def _doctor_meta(data: Path, edit) -> None:
    raw = json.loads((data / "meta.json").read_text())
    edit(raw)
    (data / "meta.json").write_text(json.dumps(raw))


def test_meta_json_may_not_list_one_shard_in_both_splits_or_a_file_outside_the_folder(tiny_dataset, tmp_path):
    """Fault: meta.json was trusted to name shard files: a validation split listing the train shard
    (validation = training data, a loss that looks like generalization) and shard names leading out of
    the dataset folder ('../x.bin', an absolute path), or a tokenizer path out of it, were read without a word."""
    data = copy_of(tiny_dataset, tmp_path)
    train_shard = {"file": "train_000000.bin", "tokens": load_dataset_meta(data).splits["train"].tokens}

    def validation_is_train(raw):
        raw["splits"]["validation"] = {"documents": 1, "tokens": train_shard["tokens"], "shards": [train_shard]}

    _doctor_meta(data, validation_is_train)
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(data)
    assert str(err.value) == (
        f"dataset {data}: 1 problem\n  - meta.json splits.validation shard = 'train_000000.bin': also listed "
        f"in split 'train'; each shard belongs to one split (validation must not overlap training); delete "
        f"{data} and prepare it again"
    )

    outside = copy_of(tiny_dataset, tmp_path, "outside")
    shutil.copyfile(outside / "validation_000000.bin", tmp_path / "elsewhere.bin")

    def leave_the_folder(raw):
        raw["splits"]["validation"]["shards"][0]["file"] = "../elsewhere.bin"
        raw["splits"]["train"]["shards"][0]["file"] = str(outside / "train_000000.bin")

    _doctor_meta(outside, leave_the_folder)
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(outside)
    fix = f"must be a file name inside {outside}; delete {outside} and prepare it again"
    assert str(err.value) == (
        f"dataset {outside}: 2 problems\n"
        f"  - meta.json splits.train shard = '{outside / 'train_000000.bin'}': {fix}\n"
        f"  - meta.json splits.validation shard = '../elsewhere.bin': {fix}"
    )

    tokenizer_outside = copy_of(tiny_dataset, tmp_path, "tokenizer_outside")
    _doctor_meta(tokenizer_outside, lambda raw: raw["tokenizer"].update(path="../data/tokenizer.model"))
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(tokenizer_outside)
    assert str(err.value) == (
        f"dataset {tokenizer_outside}: 1 problem\n  - meta.json tokenizer.path = '../data/tokenizer.model': must be "
        f"a file name inside {tokenizer_outside}; delete {tokenizer_outside} and prepare it again"
    )


def _summary(data: Path) -> str:
    meta = load_dataset_meta(data)
    splits = ", ".join(f"{name} {s.tokens:,} tokens in {len(s.shards)} shard(s)" for name, s in meta.splits.items())
    return f"{splits}, tokenizer sha256 {meta.tokenizer_sha256[:12]}"


def prepared_from_less_text(tiny_dataset: Path, out: Path, share: float, val_fraction: float) -> Path:
    """A dataset at `out` prepared with tiny_dataset's tokenizer from the first `share` of its corpus's documents
    (written to OUT.jsonl): the same tokenizer, other text."""
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    documents = (tiny_dataset.parent / "corpus.jsonl").read_text().splitlines(keepends=True)
    corpus = out.with_name(out.name + ".jsonl")
    corpus.write_text("".join(documents[: int(len(documents) * share)]))  # rounded down
    config = PrepareConfig(
        inputs=(str(corpus),),
        out=out,
        tokenizer=tiny_dataset / "tokenizer.model",
        val_fraction=val_fraction,
        workers=1,
        progress=False,
    )
    return prepare_dataset(config)


def test_ranks_that_read_different_datasets_stop_together(tiny_dataset, tmp_path):
    """Fault: --data on node-local disks whose copies differ (one node's stale, made from less text with
    the same tokenizer) passed each rank's own checks; the ranks numbered their windows differently and
    trained 3 steps to 'Done', exit status 0, on data no permutation describes. Now every rank compares
    meta.json with the others' and all stop with the same message naming what each read."""
    stale = prepared_from_less_text(tiny_dataset, tmp_path / "stale", 2 / 3, val_fraction=0.1)
    outputs = train_two_nodes_on_their_own_data(tmp_path, (tiny_dataset, stale))
    expected = (
        f"error: ranks 0 and 1 read different datasets at --data data (they differ in shards, shard contents; rank 0: "
        f"{_summary(tiny_dataset)}; rank 1: "
        f"{_summary(stale)}). Every rank must read the same prepared dataset: copy one folder to every node, or put "
        "it on storage that every node shares\n"
    )
    for code, stdout, stderr in outputs:
        assert code == 2, stdout + stderr
        assert stderr.endswith(expected) and "Traceback" not in stderr and "step " not in stdout, stdout + stderr


def test_ranks_whose_copies_hold_other_tokens_of_the_same_sizes_stop_together(tiny_dataset, tmp_path):
    """Fault: node-local --data copies with the same tokenizer and shard sizes but other tokens (prepared
    with another seed or document order, or edited and rehashed) agreed on everything the ranks compared,
    and trained to 'Done' on windows that are not one permutation of one dataset. The ranks now compare the
    shard hashes that meta.json records too."""
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    shard = np.memmap(other / "train_000000.bin", dtype=np.uint16, mode="r+")
    shard[100] = (int(shard[100]) + 1) % 512  # another valid id
    shard.flush()
    del shard
    record_hashes_anew(other)
    for code, stdout, stderr in train_two_nodes_on_their_own_data(tmp_path, (tiny_dataset, other)):
        assert code == 2, stdout + stderr
        assert "error: ranks 0 and 1 read different datasets at --data data (they differ in shard contents; " in stderr
        assert "Traceback" not in stderr and "step " not in stdout, stdout + stderr


@pytest.mark.parametrize("stage", [2.0, True])
def test_a_zero_stage_that_is_not_an_integer_is_refused_at_startup(tiny_dataset, tmp_path, stage):
    """Fault: "stage": 2.0 (and true) passed the check `stage in (0, 1, 2, 3)` by comparing equal to 2
    (1). The dry run then planned ZeRO 0 for 2.0 ('ZeRO True' for true), and the run stopped only after
    the engine had started, with 'the DeepSpeed engine reads the JSON differently ... Please report this';
    true trained silently as ZeRO 1."""
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3))
    ds = write_ds_config(tmp_path / "ds.json", stage=stage, bf16=False, micro=MICRO, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", tiny_dataset, "--out", tmp_path / "o", "--dry-run"]
    proc = run([sys.executable, REPO / "launch/train.py", *argv], env=cpu_env(), check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"error: DeepSpeed config {ds}: 1 problem\n"
        f"  - zero_optimization.stage = {stage!r}: must be 0, 1, 2 or 3 (an integer, e.g. 2)\n"
    )


def test_a_sequence_parallel_size_in_the_json_must_be_the_yamls(tiny_dataset, tmp_path):
    """Fault: "sequence_parallel_size": 2 in the DeepSpeed JSON (where DeepSpeed's Ulysses documentation
    puts it) with the YAML's train.sequence_parallel_size left at 1 passed every startup check, dry run
    included; DeepSpeed then divided the world by it in its own batch check: 'AssertionError: Check batch
    related parameters ... 8 != 4 * 1 * 1.0', a traceback on every rank after the process group started."""
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=MICRO, accum=1, sequence_parallel_size=2)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", tiny_dataset, "--out", tmp_path / "o", "--dry-run"]
    proc = run([sys.executable, REPO / "launch/train.py", *argv, "2"], env=cpu_env(), check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"error: DeepSpeed config {ds}: 1 problem\n"
        "  - sequence_parallel_size = 2: sequence parallelism is set in the YAML: train.sequence_parallel_size "
        "(now 1); remove the key from the JSON, or set the same value in the YAML\n"
    )
    # The same value in both is what the trainer does.
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3, sequence_parallel_size=2))
    proc = run([sys.executable, REPO / "launch/train.py", *argv, "2"], env=cpu_env(), check=False, timeout=300)
    assert proc.returncode == 0 and "parallel: tensor 1 x pipeline 1 x sequence 2 x data 1 = 2 rank(s)" in proc.stdout


@pytest.mark.parametrize("seed", [-1, 10**23])
def test_a_seed_out_of_range_is_refused_at_startup(tmp_path, seed):
    """Fault: train.seed -1 passed every startup check (dry run included) and the run stopped at its first
    batch with 'ValueError: expected non-negative integer' from the data order's default_rng; 10**23 stopped
    in torch.manual_seed as the engine started ('Overflow when unpacking long long'): tracebacks after the
    process group started and --out was made."""
    path = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3, seed=seed))
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert str(err.value) == (
        f"train config ({path}): 1 problem\n  - train.seed = {seed!r}: must be an integer in [0, 2**64 - 1]"
    )


@pytest.mark.parametrize(
    "section, field, value",
    [("model", "rope_base", float("inf")), ("model", "alpha_attn_init", float("nan")), ("train", "lr", float("inf"))],
)
def test_a_float_that_is_not_finite_is_refused(tmp_path, section, field, value):
    """Fault: YAML's .inf and .nan (and 1.0e+999) are floats and passed the range checks (`> 1`, `> 0`) or
    had none: rope_base .inf trained 3 steps to 'Done' with only the first pair of each head rotated
    (cos = 1, sin = 0 for the others: no positions); alpha_attn_init .nan started the run to stop at step 1
    with 'the training loss became nan ... lower train.lr', lr .inf with 'the fp32 master weights of sphere
    matrix embed.weight (nan), ...'."""
    model, train = tiny_ngpt(), tiny_train(3)
    (model if section == "model" else train)[field] = value
    path = write_yaml(tmp_path / "run.yaml", model, train)
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert str(err.value) == (
        f"{section} config ({path}): 1 problem\n  - {section}.{field} = {value!r}: must be a finite number"
    )


def test_a_validation_fraction_too_small_to_hold_out_a_document_is_refused(tiny_dataset, tmp_path):
    """Fault: --val-fraction 1e-7 (one document in ten million, for a web-scale corpus) was rounded to 0 by
    the exact fraction that picks the held-out documents, and the dataset was written without a validation
    split, silently; training then refuses it. Now the option is refused before anything is read."""
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    config = PrepareConfig(
        inputs=(str(tiny_dataset.parent / "corpus.jsonl"),),
        out=tmp_path / "ds",
        tokenizer=tiny_dataset / "tokenizer.model",
        val_fraction=1e-7,
        workers=1,
        progress=False,
    )
    with pytest.raises(NgptConfigError) as err:
        prepare_dataset(config)
    assert str(err.value) == (
        "prepare_data options: 1 problem\n  - --val-fraction = 1e-07: is below 1e-6, the smallest fraction held "
        "out (one document in a million); pass at least 1e-6"
    )
    assert not any(tmp_path.iterdir())


def test_a_resume_on_other_data_names_the_checkpoints_dataset_not_this_one(tiny_dataset, tmp_path):
    """Fault: resuming a checkpoint with --data pointing at another dataset (same tokenizer, other text) was
    refused with 'resume with the same windows_per_epoch and dataset <the --data just given>': the fix named
    the wrong dataset."""
    other = prepared_from_less_text(tiny_dataset, tmp_path / "other", 1 / 2, val_fraction=0.0)
    state = TokenWindowLoader(tiny_dataset, "train", SEQ, MICRO, 0, 1, SEED).state_dict()
    resumed = TokenWindowLoader(other, "train", SEQ, MICRO, 0, 1, SEED)
    with pytest.raises(NgptConfigError) as err:
        resumed.load_state_dict(state)
    assert str(err.value) == (
        "data loader state (from the checkpoint): 1 problem\n"
        f"  - windows_per_epoch = {state['windows_per_epoch']}: --data {other} has {resumed.windows_per_epoch} train "
        f"windows of {SEQ + 1} tokens, so the checkpoint was trained on other data; resume with its dataset "
        "(data_dir in the checkpoint's config.yaml), or start a new run with another --out"
    )
