"""DeepSpeed JSONs copied from other projects' examples.

Fault 1: a JSON with a `//` (JSONC) comment was refused as "not valid JSON at line 2, column 3: Expecting property
name enclosed in double quotes", with no word that the comment is what JSON lacks. Now the message says so.
Fault 2: `"auto"`, which Hugging Face Trainer's DeepSpeed configs write for the batch fields, got only "must be a
positive integer", as if the user had mistyped a number. Now the message says what "auto" is and what to write.
"""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config, load_ds_config


@pytest.mark.parametrize("comment", ["// micro batch", "/* micro batch */", "# micro batch"])
def test_a_comment_is_named(tmp_path, comment):
    path = tmp_path / "ds.json"
    path.write_text("{\n  " + comment + '\n  "train_micro_batch_size_per_gpu": 4\n}\n')
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(path)
    assert str(err.value) == (
        f"{path}: not valid JSON at line 2, column 3: Expecting property name enclosed in double quotes; JSON has "
        "no comments: delete the comment (DeepSpeed reads plain JSON)"
    )


def test_a_trailing_comma_gets_its_own_hint_not_the_comment_one(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{\n  "train_micro_batch_size_per_gpu": 4,\n}\n')
    with pytest.raises(NgptConfigError) as err:
        load_ds_config(path)
    assert (
        str(err.value)
        == f"{path}: not valid JSON at line 3, column 1: Expecting property name enclosed in double quotes; JSON "
        "allows no comma after the last item: delete the comma before the }"
    )


def test_auto_is_explained():
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 1}
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            config, world_size=1, tensor_parallel=1, source="ds.json", fp16_supported=False, bf16_supported=True
        )
    assert str(err.value).splitlines() == [
        "DeepSpeed config ds.json: 1 problem",
        "  - train_micro_batch_size_per_gpu = 'auto': must be a positive integer; \"auto\" is for Hugging Face's "
        "Trainer, which fills it in: write the number, or leave the field out where the others determine it",
    ]


@pytest.mark.parametrize("key", ["bf16", "fp16"])
def test_a_block_written_as_a_value_gets_its_own_example(key):
    """Fault 3: `"bf16": true` was answered with 'must be a JSON object, e.g. {"enabled": true} or {"stage": 2}':
    the ZeRO example, for a precision block. Now such a block gets the example that fits it (zero_optimization
    has its own message, with the stage)."""
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, key: True}
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            config, world_size=1, tensor_parallel=1, source="ds.json", fp16_supported=False, bf16_supported=True
        )
    assert str(err.value).splitlines()[1] == f'  - {key} = True: must be a JSON object, e.g. {{"enabled": true}}'
