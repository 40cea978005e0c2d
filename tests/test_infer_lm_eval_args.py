"""lm-eval's batch-size spellings reach the ngpt_ds adapter's model_args unchanged; each is understood."""

import pytest
from test_infer_export_load import small_export  # noqa: F401  (module fixture)

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")


def test_auto_batch_size_with_a_schedule_is_understood():
    """Fault: `--batch_size auto:4` (lm-eval's automatic size, recomputed 4 times) was refused with
    "model_args batch_size = 'auto:4': must be an integer", though plain `auto` falls back to the default."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.lm_eval_adapter import _int_arg

    assert [_int_arg(v, "batch_size", 16) for v in ("auto", "auto:4", "8", 8, None, "")] == [16, 16, 8, 8, 16, 16]
    with pytest.raises(NgptConfigError, match="model_args batch_size = 'eight': must be an integer"):
        _int_arg("eight", "batch_size", 16)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_max_length_below_one_is_refused_naming_it(small_export, value):  # noqa: F811
    """Fault: `--model_args path=...,max_length=0` (or negative) was taken: loglikelihood_rolling stopped in a bare
    AssertionError from lm-eval's window code (a traceback, as ngpt-lm-eval reports only NgptConfigError as
    `error: ...`), and generate_until read 1 token of context without a word."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    with pytest.raises(NgptConfigError) as err:
        NgptLM(path=str(small_export), device="cpu", max_length=value)
    assert str(err.value) == (
        f"model_args max_length = '{value}': must be >= 1, the most tokens the model reads at once (leave it out "
        "for the trained seq_len, 32)"
    )
    assert NgptLM(path=str(small_export), device="cpu", max_length="1").max_length == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (
            {"path": "EXPORT", "max_lenght": 16},
            "model_args max_lenght is not an option of the ngpt_ds model, which takes path, dtype, max_length, "
            "tokenizer (the device and batch size come from --device and --batch_size)",
        ),
        (
            {"pretrained": "EXPORT", "trust_remote_code": True},
            "model_args pretrained, trust_remote_code are not options of the ngpt_ds model, which takes path, dtype, "
            "max_length, tokenizer (the device and batch size come from --device and --batch_size); pretrained= is "
            "lm-eval's hf model's name for it, this model's is path=",
        ),
    ],
)
def test_a_model_arg_the_model_does_not_take_is_refused_naming_it(small_export, args, message):  # noqa: F811
    """Fault: NgptLM took any keyword (**unused) and dropped it: `--model_args path=...,max_lenght=16` scored at the
    trained seq_len without a word, and `pretrained=EXPORT` (the hf model's spelling) was reported as a missing
    path. lm-eval itself passes only batch_size, max_batch_size and device, which the model names."""
    from lm_eval.api.registry import get_model

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    given = {k: str(small_export) if v == "EXPORT" else v for k, v in args.items()}
    with pytest.raises(NgptConfigError) as err:
        get_model("ngpt_ds").create_from_arg_obj(given, {"batch_size": 2, "max_batch_size": None, "device": "cpu"})
    assert str(err.value) == message
    lm = get_model("ngpt_ds").create_from_arg_obj({"path": str(small_export)}, {"batch_size": 2, "device": "cpu"})
    assert isinstance(lm, NgptLM) and (lm.batch_size, lm.max_length) == (2, 32)
