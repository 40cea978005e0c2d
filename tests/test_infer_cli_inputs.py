"""launch/generate.py and launch/evaluate.py refuse what they cannot use with `error: ...` and exit
status 2, before loading the model: a prompt that is not UTF-8 (from --prompt, a file or stdin), an
--json file in a folder that does not exist."""

import io
import os

import pytest
from test_infer_export_load import small_export  # noqa: F401  (module fixture)


@pytest.mark.parametrize("source", ["argv", "file", "stdin"])
def test_a_prompt_that_is_not_utf8_is_a_clear_error(small_export, tmp_path, monkeypatch, capsys, source):  # noqa: F811
    """Fault: a Latin-1 prompt crashed generate.py with a traceback (exit 1): UnicodeDecodeError from
    --prompt-file, and from --prompt or stdin (bytes Python keeps as lone surrogates) sentencepiece's
    'RuntimeError: Unable to cast Python instance of type <class 'str'> to C++ type'."""
    from ngpt_ds.cli.generate import main

    raw = b"caf\xe9 au lait"
    args = [str(small_export), "--max-new-tokens", "2", "--greedy"]
    if source == "argv":
        args += ["--prompt", os.fsdecode(raw)]  # how Python decodes such a command-line argument
        where = "--prompt"
    elif source == "file":
        (tmp_path / "prompt.txt").write_bytes(raw)
        args += ["--prompt-file", str(tmp_path / "prompt.txt")]
        where = f"--prompt-file {tmp_path / 'prompt.txt'}"
    else:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
        args += ["--prompt-file", "-"]
        where = "--prompt-file - (stdin)"
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: {where}: not UTF-8 text (byte 3 is 0xe9)" in err
    assert "loaded" not in err  # refused before the model was loaded


def test_a_utf8_prompt_file_with_crlf_reads_as_before(small_export, tmp_path, capsys):  # noqa: F811
    """The prompt file is read as text mode read it: UTF-8, \\r\\n as \\n."""
    from ngpt_ds.cli.generate import main

    (tmp_path / "prompt.txt").write_bytes("café\r\nau lait".encode())
    assert (
        main([str(small_export), "--prompt-file", str(tmp_path / "prompt.txt"), "--max-new-tokens", "2", "--greedy"])
        == 0
    )
    out, err = capsys.readouterr()
    assert out.startswith("café\nau lait") and "[2 tokens" in err


def test_evaluate_json_in_a_missing_folder_is_refused_before_evaluating(small_export, tiny_dataset, tmp_path, capsys):  # noqa: F811
    """Fault: evaluate.py --json DIR/x.json with DIR missing ran the whole evaluation, then stopped with a
    FileNotFoundError traceback (exit 1), the JSON not written."""
    from ngpt_ds.cli.evaluate import main

    target = tmp_path / "missing" / "ppl.json"
    base = [str(small_export), "--data", str(tiny_dataset), "--multiples", "1", "--windows", "2"]
    assert main([*base, "--json", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"error: --json {target}: no folder {tmp_path / 'missing'}" in err
    assert main([*base, "--json", str(tmp_path)]) == 2
    assert f"error: --json {tmp_path}: is a folder" in capsys.readouterr().err


def test_negative_max_new_tokens_is_refused_before_the_prompt_is_echoed(small_export, capsys):  # noqa: F811
    """Fault: generate.py --max-new-tokens -1 printed the prompt to stdout, then the error (exit 2): a script
    reading stdout got the prompt as if it were a (0-token) result."""
    from ngpt_ds.cli.generate import main

    assert main([str(small_export), "--prompt", "The class", "--max-new-tokens", "-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "error: --max-new-tokens -1: must be >= 0" in err and "loaded" not in err


@pytest.mark.parametrize("option", ["--contexts", "--multiples"])
def test_an_empty_list_of_context_lengths_is_refused(small_export, tiny_dataset, capsys, option):  # noqa: F811
    """Fault: evaluate.py --contexts '' (an unset shell variable) printed an empty table and exited 0."""
    from ngpt_ds.cli.evaluate import main

    with pytest.raises(SystemExit) as exit_:
        main([str(small_export), "--data", str(tiny_dataset), option, " , "])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert f"argument {option}: expected at least one number, got ' , '" in err


@pytest.mark.parametrize(
    "option, value, shown, need",
    [
        ("--multiples", "inf", "inf", "> 0"),
        ("--multiples", "nan", "nan", "> 0"),
        ("--multiples", "1e308", "1e+308", "> 0"),
        ("--multiples", "1,-2", "-2.0", "> 0"),
        ("--contexts", "64,0", "0", ">= 1"),
        ("--contexts", str(2**63), str(2**63), ">= 1"),
    ],
)
def test_context_lengths_that_are_no_number_of_tokens_are_refused_before_loading(
    small_export,  # noqa: F811
    tiny_dataset,
    capsys,
    monkeypatch,
    option,
    value,
    shown,
    need,
):
    """Fault (review): evaluate.py --multiples inf or 1e308 loaded the model, then stopped with an OverflowError
    traceback (round(inf)), nan with a ValueError one; --contexts 0 was refused only after loading."""
    import ngpt_ds.infer
    from ngpt_ds.cli.evaluate import main

    monkeypatch.setattr(ngpt_ds.infer, "load", lambda *a, **kw: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        main([str(small_export), "--data", str(tiny_dataset), option, value])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert (
        f"argument {option}: {shown} in {value!r}: each must be a finite number {need} and below 2^63 (a context is "
        "a number of tokens)"
    ) in err


def test_a_multiple_whose_context_is_no_number_of_tokens_is_named_by_evaluate(small_export, tiny_dataset):  # noqa: F811
    """evaluate() itself (the API under the CLI): nan passed its `m <= 0` check and 1e18 x seq_len 32 (>= 2^63)
    was round() of a float no window index holds; both are named."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import evaluate, load

    loaded = load(small_export, device="cpu")
    with pytest.raises(NgptConfigError, match=r"^context multiples \[nan\]: must be finite numbers > 0$"):
        evaluate(loaded, tiny_dataset, multiples=[float("nan")])
    with pytest.raises(NgptConfigError) as err:
        evaluate(loaded, tiny_dataset, multiples=[1, 1e18])
    assert str(err.value) == (
        "context multiple 1e+18 times seq_len 32 is not below 2^63, no number of tokens; use multiples that the "
        "split's length allows (1, 2, 4 by default)"
    )


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seed", str(2**64), f"--seed {2**64}: must be an integer from -2^63 to 2^64 - 1 (torch's seed range)"),
        ("--seed", str(-(2**63) - 1), f"--seed {-(2**63) - 1}: must be an integer from -2^63 to 2^64 - 1"),
        ("--max-context", "0", "--max-context 0: must be >= 1 (the longest prompt accepted, in tokens)"),
        ("--max-context", "-5", "--max-context -5: must be >= 1"),
    ],
)
def test_a_seed_or_max_context_out_of_range_is_refused_before_loading(
    small_export,  # noqa: F811
    capsys,
    monkeypatch,
    option,
    value,
    message,
):
    """Fault (review): generate.py --seed 99999999999999999999999 loaded the model and echoed the prompt, then
    stopped with torch's traceback (ValueError: Overflow when unpacking long long); --max-context 0 silently
    meant the model's seq_len (`args.max_context or seq_len`)."""
    import ngpt_ds.infer
    from ngpt_ds.cli.generate import main

    monkeypatch.setattr(ngpt_ds.infer, "load", lambda *a, **kw: pytest.fail("the model was loaded"))
    assert main([str(small_export), "--prompt", "The class", "--max-new-tokens", "2", option, value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"error: {message}" in err


def test_the_ends_of_torchs_seed_range_generate(small_export, capsys):  # noqa: F811
    """-2^63 and 2^64 - 1 are seeds torch takes: they sample, and the same seed gives the same text."""
    from ngpt_ds.cli.generate import main

    texts = []
    for seed in (-(2**63), 2**64 - 1, 2**64 - 1):
        assert main([str(small_export), "--prompt", "The class", "--max-new-tokens", "4", "--seed", str(seed)]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[1] == texts[2] and all(t.startswith("The class") for t in texts)


def test_generate_refuses_a_seed_or_max_context_out_of_range(small_export):  # noqa: F811
    """generate() itself: max_context=0 meant seq_len, and a seed beyond torch's range was its ValueError."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import Sampling, generate, load

    loaded = load(small_export, device="cpu")
    with pytest.raises(NgptConfigError, match=r"^max_context 0: must be >= 1"):
        generate(loaded.model, loaded.tokenizer, "The class", max_new_tokens=2, max_context=0)
    with pytest.raises(NgptConfigError, match=r"^seed 18446744073709551616: must be an integer from -2\^63"):
        generate(loaded.model, loaded.tokenizer, "The", max_new_tokens=2, sampling=Sampling(temperature=1), seed=2**64)
