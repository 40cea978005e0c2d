"""The YAML train section: defaults by architecture, types, ranges and the hints of its errors
(ngpt_ds.train.config)."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.config import TrainConfig, load_model_and_train


def test_train_section_defaults_by_arch_and_errors(tmp_path):
    _, ngpt_train, _ = load_model_and_train("ngpt_tiny")
    assert (ngpt_train.weight_decay, ngpt_train.warmup_steps) == (0.0, 0)
    _, gpt_train, _ = load_model_and_train("gpt_tiny")
    assert gpt_train.weight_decay == 0.1 and gpt_train.warmup_steps > 0
    assert TrainConfig(max_steps=500).resolve("gpt").warmup_steps == 50
    with pytest.raises(NgptConfigError, match=r"--model gpt conflicts with .*ngpt_tiny.yaml"):
        load_model_and_train("ngpt_tiny", arch="gpt")
    path = tmp_path / "x.yaml"
    path.write_text("model: {n_layer: 2}\ntrain: {micro_batch_size: 4, lr: -1, max_steps: 0}\n")
    with pytest.raises(
        NgptConfigError, match=r"train.micro_batch_size = 4: unknown field.*belong in the DeepSpeed JSON"
    ):
        load_model_and_train(str(path))
    path.write_text("model: {n_layer: 2}\ntrain: {lr: -1, max_steps: 0}\n")
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert "train.max_steps = 0" in str(err.value) and "train.lr = -1" in str(err.value)


def test_a_number_written_as_text_gets_the_hint_that_fits_how_it_was_written(tmp_path):
    """Fault: a quoted `lr: '0.01'` got "YAML reads 0.01 as text; write it with a dot, e.g. 0.01", advice that
    changes nothing; only an unquoted 1e-3 (YAML 1.1 floats need a dot) is fixed by a dot."""
    path = tmp_path / "x.yaml"
    path.write_text("model: {n_layer: 2}\ntrain: {lr: '0.01', min_lr: 1e-5}\n")
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert "train.lr = '0.01': must be a number (a quoted number is text in YAML: remove the quotes)" in str(err.value)
    assert (
        "train.min_lr = '1e-5': must be a number (YAML reads 1e-5 as text; write it with a dot, e.g. 1.0e-05)"
        in str(err.value)
    )


def test_a_collective_timeout_beyond_what_timedelta_holds_is_named(tmp_path):
    """Fault: train.dist_timeout_s: 100000000000000 (meant as 'never') stopped every rank at startup in an
    OverflowError traceback from timedelta ('days=1157407407; must have magnitude <= 999999999')."""
    path = tmp_path / "x.yaml"
    path.write_text("model: {n_layer: 2}\ntrain: {dist_timeout_s: 100000000000000}\n")
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert "train.dist_timeout_s = 100000000000000: must be at most 1000000000 seconds" in str(err.value)
    path.write_text("model: {n_layer: 2}\ntrain: {dist_timeout_s: 1000000000}\n")
    assert load_model_and_train(str(path))[1].dist_timeout_s == 10**9


@pytest.mark.parametrize("key", ["dtype", "precision", "mixed_precision"])
def test_a_precision_field_in_the_train_section_points_to_the_json(key):
    """Fault: `train: {dtype: bf16}` (or precision, mixed_precision) was refused as 'train.dtype = 'bf16':
    unknown field' alone, as if the trainer had no precision switch; batch, clipping and bf16 keys already
    pointed to the DeepSpeed JSON."""
    with pytest.raises(NgptConfigError) as err:
        TrainConfig.from_dict({key: "bf16"})
    assert str(err.value) == (
        f"train config: 1 problem\n  - train.{key} = 'bf16': unknown field. Batch sizes, precision (the JSON's "
        '"bf16": {"enabled": true} or "fp16"), ZeRO stage and gradient clipping belong in the DeepSpeed JSON '
        "(--deepspeed_config)"
    )


@pytest.mark.parametrize(
    "field, value, line",
    [
        ("lr", 10**400, "train.lr = 100000000000000000...0000000000000000000: is beyond float32's range (3.4e+38)"),
        ("lr", 10**39, f"train.lr = {10**39}: is beyond float32's range (3.4e+38), in which the trainer computes"),
        ("eps", 10**400, "train.eps = 100000000000000000...0000000000000000000: is beyond float32's range"),
        (
            "stop_grace_s",
            10**400,
            "train.stop_grace_s = 100000000000000000...0000000000000000000: must be a number of seconds >= 0",
        ),
    ],
)
def test_whole_numbers_beyond_range_in_float_train_fields_are_refused(field, value, line):
    """Fault (review): float fields take whole numbers, which no range check bounded: lr and stop_grace_s
    10**400 passed validate and stopped the run in an OverflowError once it used them."""
    with pytest.raises(NgptConfigError) as err:
        TrainConfig.from_dict({field: value}, source="my.yaml").resolve("ngpt").validate("my.yaml")
    assert str(err.value).startswith(f"my.yaml: 1 problem\n  - {line}"), str(err.value)
    TrainConfig.from_dict({field: 1}, source="my.yaml").resolve("ngpt").validate("my.yaml")


@pytest.mark.parametrize(
    "train, lines",
    [
        ({"lr": -0.001}, ["train.lr = -0.001: must be > 0"]),
        ({"lr": 0}, ["train.lr = 0: must be > 0"]),
        (
            {"lr": -0.001, "min_lr": -1},
            ["train.lr = -0.001: must be > 0", "train.min_lr = -1: must be in [0, lr = -0.001]"],
        ),
        ({"lr": 0.01, "min_lr": 0.02}, ["train.min_lr = 0.02: must be in [0, lr = 0.01]"]),
    ],
)
def test_a_refused_lr_does_not_make_a_sound_min_lr_a_problem_too(tmp_path, train, lines):
    """Fault: `lr: -0.001` was reported with a second problem, "train.min_lr = 0.0: must be in [0, lr = -0.001]",
    which names the default min_lr, a sound value, as wrong."""
    path = tmp_path / "x.yaml"
    path.write_text(f"model: {{n_layer: 2}}\ntrain: {train}\n".replace("'", ""))
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    n = len(lines)
    assert str(err.value) == f"train config ({path}): {n} problem{'s' if n > 1 else ''}\n" + "\n".join(
        f"  - {line}" for line in lines
    )


def test_a_quoted_whole_number_in_an_int_field_is_told_to_lose_its_quotes(tmp_path):
    """Fault (input30): `vocab_size: '512'` got "must be an integer or null" with no word on why, where a quoted
    float field already got the quotes hint."""
    path = tmp_path / "x.yaml"
    path.write_text("model: {n_layer: 2, vocab_size: '512'}\ntrain: {max_steps: '10'}\n")
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert (
        "model.vocab_size = '512': must be an integer or null (a quoted number is text in YAML: remove the quotes)"
        in str(err.value)
    )
    assert "train.max_steps = '10': must be an integer (a quoted number is text in YAML: remove the quotes)" in str(
        err.value
    )
