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


def _generate_until(lm, gen_kwargs: dict) -> list[str]:
    from lm_eval.api.instance import Instance

    return lm.generate_until([Instance("generate_until", {}, ("In the beginning", gen_kwargs), 0)], disable_tqdm=True)


@pytest.mark.filterwarnings("ignore::ngpt_ds.infer.generate.BeyondTrainingContext")  # 256 tokens past 32
def test_a_tasks_max_new_tokens_bounds_the_generation(small_export, monkeypatch):  # noqa: F811
    """Fault: generate_until read the generation length from max_gen_toks alone: a task that gives transformers'
    max_new_tokens (16 or 32 in some of lm-eval's tasks), which lm-eval's hf model follows, was generated to the
    default 256 tokens, the answer then read from a continuation 8 to 16 times longer."""
    from ngpt_ds.infer import lm_eval_adapter

    lengths = []
    original = lm_eval_adapter.generate_ids

    def recording(model, prompt, max_new_tokens, *args, **kwargs):
        lengths.append(max_new_tokens)
        return original(model, prompt, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(lm_eval_adapter, "generate_ids", recording)
    lm = lm_eval_adapter.NgptLM(path=str(small_export), device="cpu")
    for gen_kwargs in ({"until": ["\n\n"]}, {"max_new_tokens": 3}, {"max_gen_toks": 5, "max_new_tokens": 3}):
        _generate_until(lm, gen_kwargs)
    _generate_until(lm, {"max_gen_toks": 4, "num_beams": 1, "do_sample": False, "temperature": 0.0})
    assert lengths == [256, 3, 3, 4]


@pytest.mark.parametrize(
    "gen_kwargs, message",
    [
        (
            {"until": ["\n"], "num_beams": 10},
            "generation_kwargs num_beams = 10: the ngpt_ds model decodes greedily or by sampling (one beam) and "
            "follows only until, max_gen_toks, max_new_tokens, do_sample, temperature, top_k, top_p, seed; remove it "
            "from the task's generation_kwargs or --gen_kwargs",
        ),
        (
            {"temprature": 0.7, "repetition_penalty": 1.2},
            "generation_kwargs repetition_penalty = 1.2, temprature = 0.7: the ngpt_ds model decodes greedily or by "
            "sampling (one beam) and follows only until, max_gen_toks, max_new_tokens, do_sample, temperature, top_k, "
            "top_p, seed; remove them from the task's generation_kwargs or --gen_kwargs",
        ),
    ],
)
def test_generation_kwargs_the_model_does_not_follow_are_refused_naming_them(small_export, gen_kwargs, message):  # noqa: F811
    """Fault: generate_until dropped every generation_kwarg it did not know: num_beams: 10 (a task of lm-eval's)
    was decoded greedily and a misspelled --gen_kwargs temprature=0.7 ignored, without a word."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    lm = NgptLM(path=str(small_export), device="cpu")
    with pytest.raises(NgptConfigError) as err:
        _generate_until(lm, gen_kwargs)
    assert str(err.value) == message
