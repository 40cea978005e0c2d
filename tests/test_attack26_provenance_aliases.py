"""A checkpoint's config.yaml fields that an export copies into its config.json are scalars, as the trainer writes.

Fault: read_run_config checked the types of data_dir, tokenizer_sha256, train and deepspeed, but not the three
fields read_checkpoint_weights copies into the provenance an export writes (config.json's `training`):
train_data_sha256, train.eval_batches and deepspeed.train_micro_batch_size_per_gpu. YAML aliases nest 9^7 items
in 8 lines (437 bytes), read as shared references in a blink; json.dumps of the export's config.json wrote them
out whole: 37 s and 1.2 GiB for 9^7, some 80 times that for 9^9 in 10 lines, after the weights were read.
"""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.run_checkpoint import read_run_config


def _aliases(levels: int) -> str:
    """YAML anchors nesting 9**levels items in `levels` lines: `*a<levels>` names the whole tree."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


FIELDS = {
    "train_data_sha256": ("train_data_sha256: *a7", "train_data_sha256", "a sha256 hex digest"),
    "train.eval_batches": ("train: {eval_batches: *a7}", "train.eval_batches", "a number"),
    "deepspeed micro-batch": (
        "deepspeed: {train_micro_batch_size_per_gpu: *a7}",
        "deepspeed.train_micro_batch_size_per_gpu",
        "a number",
    ),
}


@pytest.mark.parametrize("case", list(FIELDS))
def test_an_aliased_provenance_field_is_refused_abridged(case, tmp_path):
    line, name, what = FIELDS[case]
    (tmp_path / "config.yaml").write_text(_aliases(7) + "model: {vocab_size: 512}\n" + line + "\n", encoding="utf-8")
    with pytest.raises(NgptConfigError) as caught:
        read_run_config(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'}: {name} = [[[[[[")
    assert message.endswith(f" must be {what}; the file was not written by the ngpt_ds trainer or was altered")
    assert len(message) < 1000


def test_the_fields_as_the_trainer_writes_them_are_read(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "model: {vocab_size: 512}\ntrain_data_sha256: " + "ab" * 32 + "\n"
        "train: {eval_batches: 4}\ndeepspeed: {train_micro_batch_size_per_gpu: 2}\n",
        encoding="utf-8",
    )
    run = read_run_config(tmp_path)
    assert (
        run["train_data_sha256"],
        run["train"]["eval_batches"],
        run["deepspeed"]["train_micro_batch_size_per_gpu"],
    ) == (
        "ab" * 32,
        4,
        2,
    )
