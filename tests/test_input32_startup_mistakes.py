"""Operator mistakes in the YAML and JSON configs, each given to the startup the launcher runs (input32).

Each case is given to ngpt_ds.train.builder.prepare, which ngpt-train (launch/train.py) calls on every rank before
any process group or DeepSpeed engine, and must end in one NgptConfigError naming the file, the field and the fix
(a few run launch/train.py itself: exit 2, one `error:` line, no engine). Faults fixed here, each failing on the
old code (ngpt_ds/errors.py, ngpt_ds/config_files.py):

- `learning_rate: 0.1` (the name of other trainers) was "unknown field" with no name offered; now "did you mean
  'lr'?" (also steps, num_layers, d_model, block_size, ...: errors.SYNONYMS);
- `'seed ': 5` (a key with a trailing space) was shown as "train.seed  = 5: unknown field; did you mean 'seed'?",
  the space invisible; `seed: 0o17` (YAML 1.2's octal, text to YAML 1.1) and `max_steps: 10e3` were "must be an
  integer" with no word of why; `lr: ~` / `model.arch: null` "must be a number/string", `max_steps: true`
  "must be an integer" and `max_steps: 3.0` likewise: each now says how YAML read it and what to write;
- a symbolic link loop given to --config was "unknown preset '.../loop'" (or "config file ... does not exist"
  with a .yaml name), and to --deepspeed_config "does not exist"; a link to a deleted file named the link alone.
"""

import json
import os

import pytest
from launching import run_launch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import builder
from ngpt_ds.train.builder import TrainOptions

from conftest import cpu_env

MODEL = "model:\n  arch: ngpt\n  n_layer: 2\n  n_embd: 32\n  n_head: 2\n  seq_len: 32\n"
TRAIN = "train:\n  max_steps: 3\n  lr: 0.01\n  eval_interval: 0\n  checkpoint_interval: 0\n"
DS = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 0}}
OK = MODEL + TRAIN


def _yaml(old: str, new: str) -> str:
    assert old in OK
    return OK.replace(old, new)


def _prepare(tmp_path, dataset, config: str, ds: str) -> str:
    options = TrainOptions(config=config, deepspeed_config=ds, data=str(dataset), out=str(tmp_path / "out"))
    with pytest.raises(NgptConfigError) as err:
        builder.prepare(options, resume=False)
    return str(err.value)


# (case, the YAML's text, the one problem line of the error)
YAML_CASES = [
    (
        "lr 1e-3 (text to YAML 1.1)",
        _yaml("lr: 0.01", "lr: 1e-3"),
        "train.lr = '1e-3': must be a number (YAML reads 1e-3 as text; write it with a dot, e.g. 0.001)",
    ),
    (
        "lr quoted",
        _yaml("lr: 0.01", "lr: '0.01'"),
        "train.lr = '0.01': must be a number (a quoted number is text in YAML: remove the quotes)",
    ),
    (
        "seed 0o17",
        OK + "  seed: 0o17\n",
        "train.seed = '0o17': must be an integer (YAML 1.1 reads 0o17 as text, 0o being YAML 1.2's octal: write 15)",
    ),
    (
        "max_steps 10e3",
        _yaml("max_steps: 3", "max_steps: 10e3"),
        "train.max_steps = '10e3': must be an integer (YAML reads 10e3 as text; write the whole number 10000)",
    ),
    (
        "max_steps 3.0",
        _yaml("max_steps: 3", "max_steps: 3.0"),
        "train.max_steps = 3.0: must be an integer (a number with a dot or an exponent is a float in YAML: write 3)",
    ),
    (
        "max_steps yes",
        _yaml("max_steps: 3", "max_steps: yes"),
        "train.max_steps = True: must be an integer (YAML reads yes/no, on/off and true/false unquoted as true: "
        "write the value meant, quoted if a word)",
    ),
    (
        "lr ~",
        _yaml("lr: 0.01", "lr: ~"),
        "train.lr = None: must be a number (YAML reads ~, null and an empty value as no value: write one, or delete "
        "the line for the default)",
    ),
    (
        "lr empty",
        _yaml("lr: 0.01", "lr:"),
        "train.lr = None: must be a number (YAML reads ~, null and an empty value as no value: write one, or delete "
        "the line for the default)",
    ),
    (
        "arch null",
        _yaml("arch: ngpt", "arch: null"),
        "model.arch = None: must be a string (YAML reads ~, null and an empty value as no value: write one, or delete "
        "the line for the default)",
    ),
    ("lr .inf", _yaml("lr: 0.01", "lr: .inf"), "train.lr = inf: must be a finite number"),
    ("lr .nan", _yaml("lr: 0.01", "lr: .nan"), "train.lr = nan: must be a finite number"),
    ("warmup negative", OK + "  warmup_steps: -5\n", "train.warmup_steps = -5: must be an integer >= 0"),
    ("learning_rate", OK + "  learning_rate: 0.1\n", "train.learning_rate = 0.1: unknown field; did you mean 'lr'?"),
    ("warmup_step", OK + "  warmup_step: 10\n", "train.warmup_step = 10: unknown field; did you mean 'warmup_steps'?"),
    ("steps", OK + "  steps: 10\n", "train.steps = 10: unknown field; did you mean 'max_steps'?"),
    (
        "key with a trailing space",
        OK + "  'seed ': 5\n",
        "train.'seed ' = 5: unknown field: the name has a space or tab at its start or end; write 'seed' without it",
    ),
]


@pytest.mark.parametrize("text, problem", [case[1:] for case in YAML_CASES], ids=[case[0] for case in YAML_CASES])
def test_a_yaml_value_mistake_is_named_with_its_fix(tmp_path, tiny_dataset, text, problem):
    config, ds = tmp_path / "c.yaml", tmp_path / "ds.json"
    config.write_text(text)
    ds.write_text(json.dumps(DS))
    section = "model" if problem.startswith("model.") else "train"
    assert _prepare(tmp_path, tiny_dataset, str(config), str(ds)) == (
        f"{section} config ({config}): 1 problem\n  - {problem}"
    )


def test_num_layers_and_d_model_name_the_model_fields(tmp_path, tiny_dataset):
    """Other trainers' names for the model's fields: difflib found nothing close to n_layer for num_layers."""
    config, ds = tmp_path / "c.yaml", tmp_path / "ds.json"
    config.write_text(MODEL + "  num_layers: 4\n  d_model: 64\n" + TRAIN)
    ds.write_text(json.dumps(DS))
    lines = _prepare(tmp_path, tiny_dataset, str(config), str(ds)).splitlines()
    assert lines[0] == f"model config ({config}): 2 problems"
    assert lines[1].startswith("  - model.d_model = 64: unknown field; did you mean 'n_embd'? (known fields: ")
    assert lines[2].startswith("  - model.num_layers = 4: unknown field; did you mean 'n_layer'? (known fields: ")


# (case, the config's text or None for a valid one, the DeepSpeed JSON's text or None, the whole error; {c}: the
# config's path, {d}: the JSON's)
FILE_CASES = [
    (
        "tab indent",
        OK.replace("  lr", "\tlr"),
        None,
        "{c}: not valid YAML: line 9, column 1: found character '\\t' that cannot start any token; YAML indents with "
        "spaces, not tabs",
    ),
    ("duplicated key", OK + "  lr: 0.5\n", None, "{c}: key 'lr' appears twice (line 12); keep one"),
    (
        "train: []",
        MODEL + "train: []\n",
        None,
        "{c}: the train: section must be a mapping of field: value lines, got list []",
    ),
    (
        "two documents",
        OK + "---\nmodel:\n  n_layer: 3\n",
        None,
        "{c}: not valid YAML: line 12, column 1: but found another document (expected a single document in the "
        "stream at line 1, column 1)",
    ),
    (
        "seed 017",
        OK + "  seed: 017\n",
        None,
        "{c}: seed = 017 (line 12) is read by YAML as the octal number 15, not 17: write it without the leading zero "
        "(or 15, if the octal number was meant)",
    ),
    (
        "JSON comment",
        None,
        '{\n  // ZeRO 0\n  "train_micro_batch_size_per_gpu": 2\n}',
        "{d}: not valid JSON at line 2, column 3: Expecting property name enclosed in double quotes; JSON has no "
        "comments: delete the comment (DeepSpeed reads plain JSON)",
    ),
    (
        "JSON trailing comma",
        None,
        '{"train_micro_batch_size_per_gpu": 2,}',
        "{d}: not valid JSON at line 1, column 38: Expecting property name enclosed in double quotes; JSON allows no "
        "comma after the last item: delete the comma before the }}",
    ),
    (
        "train_batch_size as text",
        None,
        '{"train_micro_batch_size_per_gpu": 2, "train_batch_size": "2"}',
        "DeepSpeed config {d}: 1 problem\n  - train_batch_size = '2': must be a positive integer",
    ),
    (
        "JSON key typo",
        None,
        '{"train_micro_batch_size_per_gpu": 2, "gradient_cliping": 1.0}',
        "DeepSpeed config {d}: 1 problem\n  - gradient_cliping = 1.0: unknown key: DeepSpeed does not read it and "
        "would silently ignore it; did you mean 'gradient_clipping'?",
    ),
    (
        "JSON empty",
        None,
        "",
        "DeepSpeed config {d} is empty: give it a JSON object of DeepSpeed settings, or pass a shipped one, e.g. "
        "--deepspeed_config ds_configs/zero2.json",
    ),
]


@pytest.mark.parametrize(
    "config_text, ds_text, message", [case[1:] for case in FILE_CASES], ids=[case[0] for case in FILE_CASES]
)
def test_a_file_mistake_is_named_with_its_fix(tmp_path, tiny_dataset, config_text, ds_text, message):
    config, ds = tmp_path / "c.yaml", tmp_path / "ds.json"
    config.write_text(OK if config_text is None else config_text)
    ds.write_text(json.dumps(DS) if ds_text is None else ds_text)
    assert _prepare(tmp_path, tiny_dataset, str(config), str(ds)) == message.format(c=config, d=ds)


def test_a_byte_order_mark_on_both_files_trains_as_written(tmp_path, tiny_dataset):
    """Windows editors' UTF-8 with BOM: both files read, the settings as written (not refused, not lost)."""
    config, ds = tmp_path / "c.yaml", tmp_path / "ds.json"
    config.write_bytes(b"\xef\xbb\xbf" + _yaml("lr: 0.01", "lr: 0.02").encode())
    ds.write_bytes(b"\xef\xbb\xbf" + json.dumps({**DS, "gradient_clipping": 0.5}).encode())
    options = TrainOptions(config=str(config), deepspeed_config=str(ds), data=str(tiny_dataset), out=str(tmp_path))
    prepared = builder.prepare(options, resume=False)
    assert (prepared.run.train.lr, prepared.run.deepspeed["gradient_clipping"]) == (0.02, 0.5)


@pytest.mark.parametrize("flag", ["--config", "--deepspeed_config"])
def test_a_symbolic_link_loop_is_named(tmp_path, tiny_dataset, flag):
    """Fault: a loop of links was 'unknown preset' (--config) or 'does not exist' (--deepspeed_config)."""
    os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
    os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text(OK)
    (tmp_path / "ds.json").write_text(json.dumps(DS))
    config = str(tmp_path / ("a.yaml" if flag == "--config" else "c.yaml"))
    ds = str(tmp_path / ("a.yaml" if flag == "--deepspeed_config" else "ds.json"))
    what = "config" if flag == "--config" else "DeepSpeed config"
    assert _prepare(tmp_path, tiny_dataset, config, ds) == (
        f"{what} {tmp_path / 'a.yaml'} is a symbolic link that leads back to itself (a loop of links, in its name or "
        "a folder above it): point the link at the config file, or give the file itself"
    )


def test_a_link_to_a_deleted_file_names_its_target(tmp_path, tiny_dataset):
    """Fault: 'config file .../c.yaml does not exist', while the file named is there: a link to a moved one."""
    os.symlink("moved.yaml", tmp_path / "c.yaml")
    (tmp_path / "ds.json").write_text(json.dumps(DS))
    assert _prepare(tmp_path, tiny_dataset, str(tmp_path / "c.yaml"), str(tmp_path / "ds.json")) == (
        f"config {tmp_path / 'c.yaml'} is a symbolic link to moved.yaml, which does not exist (moved or deleted?): "
        "point the link at the config file, or give the file itself"
    )


@pytest.mark.parametrize(
    "config_text, line",
    [
        (OK + "  learning_rate: 0.1\n", "  - train.learning_rate = 0.1: unknown field; did you mean 'lr'?"),
        (
            OK + "  seed: 0o17\n",
            "  - train.seed = '0o17': must be an integer (YAML 1.1 reads 0o17 as text, 0o being "
            "YAML 1.2's octal: write 15)",
        ),
    ],
    ids=["learning_rate", "seed 0o17"],
)
def test_launch_train_names_it_in_one_error_before_any_engine(tmp_path, tiny_dataset, config_text, line):
    """The command itself: exit 2, the error's lines and no traceback, no DeepSpeed engine, no run folder."""
    config, ds = tmp_path / "c.yaml", tmp_path / "ds.json"
    config.write_text(config_text)
    ds.write_text(json.dumps(DS))
    done = run_launch(
        "train.py",
        "--config",
        config,
        "--deepspeed_config",
        ds,
        "--data",
        tiny_dataset,
        "--out",
        tmp_path / "out",
        env=cpu_env(),
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert f"error: train config ({config}): 1 problem\n{line}\n" in output
    assert "Traceback" not in output and "DeepSpeed engine" not in output
    assert not (tmp_path / "out").exists()


def test_a_json_files_null_gets_no_yaml_advice():
    """The YAML readings above are not said of a JSON file (an export's config.json reaches the same checks)."""
    from ngpt_ds.model import ModelConfig

    for source, hint in (
        ("model config (c.yaml)", " (YAML reads ~, null and an empty value as no value: write one, or delete the line "
         "for the default)"),
        ("export /m/config.json", ""),
    ):  # fmt: skip
        with pytest.raises(NgptConfigError) as err:
            ModelConfig(arch="ngpt", n_layer=None).validate(source)  # type: ignore[arg-type]
        assert str(err.value) == f"{source}: 1 problem\n  - model.n_layer = None: must be an integer{hint}"
