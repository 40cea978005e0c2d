"""Bad input, one table: every row is a command a user could type, the exit status it must give and a
fragment of its one-line message. No row may print a Python traceback or create its --out.

Rows run as single-process commands, `python launch/x.py ...`, each forked from a process that has
imported torch and DeepSpeed (tests/forked_cli.py); one row per script also runs in a fresh interpreter.
Nearly all stop at startup within a second. Rows that need a checkpoint or an export share
test_infer_export's tiny trained run.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_infer_export import MODEL, TRAIN, exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, cpu_env, run, run_launch, write_ds_config, write_yaml

# Rows: (id, script, arguments, exit status, message fragment). {name} in an argument is a path from the
# `ctx` fixture; {out} is a fresh path per row that must still not exist afterwards.
PREPARE = "prepare_data.py"
TRAIN_PY = "train.py"
EXPORT = "export.py"
GENERATE = "generate.py"
EVALUATE = "evaluate.py"


def train_args(*extra, config="{yaml}", ds="{ds}", data="{data}", out="{out}"):
    return ["--config", config, "--deepspeed_config", ds, "--data", data, "--out", out, "--no-progress", *extra]


ROWS = [
    # ---- data preparation ----
    ("prepare-missing-input", PREPARE, ["--input", "{tmp}/nope.jsonl", "--out", "{out}"], 2, "no such file"),
    ("prepare-input-without-out", PREPARE, ["--input", "{corpus}"], 2, "--out DIR is required with --input"),
    ("prepare-out-is-a-symlink", PREPARE, ["--input", "{corpus}", "--out", "{link_out}"], 2, "is a symbolic link (to"),
    (
        "prepare-option-without-input",
        PREPARE,
        ["--text-field", "body", "--out", "{out}"],
        2,
        "--text-field: only used with --input",
    ),
    (
        "prepare-val-fraction-out-of-range",
        PREPARE,
        ["--input", "{corpus}", "--out", "{out}", "--val-fraction", "0.9"],
        2,
        "--val-fraction = 0.9: must be in [0, 0.5]",
    ),
    (
        "prepare-vocab-too-small",
        PREPARE,
        ["--input", "{corpus}", "--out", "{out}", "--vocab-size", "10"],
        2,
        "is too small",
    ),
    (
        "prepare-tokenizer-missing",
        PREPARE,
        ["--input", "{corpus}", "--out", "{out}", "--tokenizer", "{tmp}/no.model"],
        2,
        "--tokenizer = ",
    ),
    (
        "prepare-unknown-text-field",
        PREPARE,
        ["--input", "{corpus}", "--out", "{out}", "--text-field", "body"],
        2,
        "body",
    ),
    # ---- training: the DeepSpeed JSON ----
    ("train-json-missing", TRAIN_PY, train_args(ds="{tmp}/nope.json"), 2, "does not exist. The shipped ones"),
    ("train-json-malformed", TRAIN_PY, train_args(ds="{json_malformed}"), 2, "not valid JSON at line 2"),
    (
        "train-json-unknown-top-level-key",
        TRAIN_PY,
        train_args(ds="{json_unknown_key}"),
        2,
        "gradient_clip = 1.0: unknown key: DeepSpeed does not read it and would silently ignore it; did you mean "
        "'gradient_clipping'?",
    ),
    (
        "train-json-unknown-zero-key",
        TRAIN_PY,
        train_args(ds="{json_unknown_zero_key}"),
        2,
        "zero_optimization.overlap_com = True: unknown field; did you mean 'overlap_comm'?",
    ),
    (
        "train-json-bf16-enabled-string",
        TRAIN_PY,
        train_args(ds="{json_bf16_string}"),
        2,
        "bf16.enabled = 'false': must be true or false (a JSON boolean, without quotes)",
    ),
    (
        "train-json-bf16-not-an-object",
        TRAIN_PY,
        train_args(ds="{json_bf16_bool}"),
        2,
        "bf16 = True: must be a JSON object",
    ),
    (
        "train-json-removed-block",
        TRAIN_PY,
        train_args(ds="{json_removed}"),
        2,
        "elasticity = '{...}': DeepSpeed no longer supports it",
    ),
    ("train-json-optimizer-block", TRAIN_PY, train_args(ds="{json_optimizer}"), 2, "optimizer = '{...}': remove it"),
    ("train-json-batch-product", TRAIN_PY, train_args(ds="{json_batch}"), 2, "train_batch_size = 7, but"),
    ("train-json-negative-clipping", TRAIN_PY, train_args(ds="{json_clip}"), 2, "gradient_clipping = -1.0: must be"),
    # A run started with either switch trained and saved, and stopped in a DeepSpeed AssertionError traceback
    # at its first resume (load_universal: every rank; use_node_local_storage: a tensor- or pipeline-parallel
    # checkpoint without mp_rank_01).
    (
        "train-json-load-universal",
        TRAIN_PY,
        train_args(ds="{json_load_universal}"),
        2,
        "checkpoint.load_universal = True: remove it: the trainer converts checkpoints",
    ),
    (
        "train-json-node-local-checkpoints",
        TRAIN_PY,
        train_args(ds="{json_node_local}"),
        2,
        "checkpoint.use_node_local_storage = True: remove it: the trainer saves to --out, which every node must share",
    ),
    ("train-json-fp16-on-cpu", TRAIN_PY, train_args(ds="{json_fp16}"), 2, "this device does not support fp16"),
    # ---- training: the YAML ----
    ("train-yaml-lr-not-a-number", TRAIN_PY, train_args(config="{yaml_lr}"), 2, "train.lr = 'fast': must be a number"),
    (
        "train-yaml-betas-scalar",
        TRAIN_PY,
        train_args(config="{yaml_betas}"),
        2,
        "train.betas = 0.9: must be a list of 2 numbers",
    ),
    (
        "train-yaml-model-field-type",
        TRAIN_PY,
        train_args(config="{yaml_model_type}"),
        2,
        "model.rope_base = 'fast': must be a number",
    ),
    ("train-yaml-engine-field", TRAIN_PY, train_args(config="{yaml_engine_field}"), 2, "belong in the DeepSpeed JSON"),
    ("train-yaml-malformed", TRAIN_PY, train_args(config="{yaml_malformed}"), 2, "not valid YAML"),
    # --max-time nan never passed its deadline (ignored), and a negative time was taken as 0.
    (
        "train-max-time-nan",
        TRAIN_PY,
        train_args("--max-time", "nan"),
        2,
        "'nan': must be a finite number of seconds >= 0",
    ),
    ("train-max-time-negative", TRAIN_PY, train_args("--max-time", "-60"), 2, "'-60': must be a finite number"),
    (
        "train-pipeline-with-zero2",
        TRAIN_PY,
        train_args(config="{yaml_pipeline}", ds="{json_zero2}"),
        2,
        "json_zero2.json sets zero_optimization.stage 2, and DeepSpeed's pipeline engine runs with ZeRO stage 0 or 1 only",
    ),
    (
        "train-sequence-parallel-heads",
        TRAIN_PY,
        train_args(config="{yaml_sequence_parallel}"),
        2,
        "model.n_head = 3 is not divisible by train.sequence_parallel_size = 2",
    ),
    ("train-unknown-preset", TRAIN_PY, train_args(config="ngpt_huge"), 2, "unknown preset 'ngpt_huge'"),
    ("train-vocab-differs-from-data", TRAIN_PY, train_args(config="{yaml_vocab}"), 2, "vocab"),
    # ---- training: data and output ----
    ("train-data-missing", TRAIN_PY, train_args(data="{tmp}/no_data"), 2, "no_data"),
    (
        "train-out-not-writable",
        TRAIN_PY,
        train_args(out="/sys/ngpt_ds_bad_inputs_out"),
        2,
        "--out /sys/ngpt_ds_bad_inputs_out is not writable",
    ),
    ("train-out-is-a-file", TRAIN_PY, train_args(out="{a_file}/run"), 2, "is a file, not a folder"),
    # ---- resume ----
    ("resume-path-missing", TRAIN_PY, train_args("--resume", "{tmp}/no_run"), 2, "does not exist"),
    (
        "resume-vocab-512-checkpoint-on-vocab-400-data",
        TRAIN_PY,
        train_args("--resume", "{checkpoint}", data="{data400}"),
        2,
        "model.vocab_size = 512 in the checkpoint, 400 now",
    ),
    (
        "resume-data-from-another-tokenizer",
        TRAIN_PY,
        train_args("--resume", "{checkpoint}", data="{data_other}"),
        2,
        "was tokenized with another tokenizer",
    ),
    (
        "resume-other-model-shape",
        TRAIN_PY,
        train_args("--resume", "{checkpoint}", config="{yaml_deeper}"),
        2,
        "model.n_layer = 2 in the checkpoint, 3 now",
    ),
    # ---- export ----
    ("export-missing-checkpoint", EXPORT, ["{tmp}/no_run", "--out", "{out}"], 2, "does not exist"),
    ("export-partial-checkpoint", EXPORT, ["{partial}", "--out", "{out}"], 2, "partial checkpoint"),
    ("export-out-is-a-symlink", EXPORT, ["{checkpoint}", "--out", "{link_out}"], 2, "is a symbolic link (to"),
    (
        "export-tokenizer-of-another-vocab",
        EXPORT,
        ["{checkpoint}", "--out", "{out}", "--tokenizer", "{tok400}"],
        2,
        "has a vocabulary of 400 pieces",
    ),
    # ---- generation ----
    ("generate-missing-model", GENERATE, ["{tmp}/no_model", "--prompt", "x"], 2, "does not exist"),
    ("generate-top-p-out-of-range", GENERATE, ["{export}", "--prompt", "x", "--top-p", "1.5"], 2, "top_p = 1.5"),
    (
        "generate-prompt-file-missing",
        GENERATE,
        ["{export}", "--prompt-file", "{tmp}/no_prompt.txt"],
        2,
        "--prompt-file",
    ),
    (
        "generate-tokenizer-same-size-other-pieces",
        GENERATE,
        ["{export}", "--prompt", "x", "--tokenizer", "{tok_other}"],
        2,
        "is not the one",
    ),
    (
        "generate-export-tokenizer-outside-folder",
        GENERATE,
        ["{export_escape}", "--prompt", "x"],
        2,
        "must name a file inside the export folder",
    ),
    # ---- evaluation ----
    ("evaluate-missing-model", EVALUATE, ["{tmp}/no_model"], 2, "does not exist"),
    ("evaluate-data-from-another-tokenizer", EVALUATE, ["{export}", "--data", "{data_other}"], 2, "tokenizer"),
    ("evaluate-missing-split", EVALUATE, ["{export}", "--data", "{data400}", "--split", "test"], 2, "test"),
]


def _prepare(corpus: Path, out: Path, vocab: int) -> Path:
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    return prepare_dataset(
        PrepareConfig(inputs=(str(corpus),), out=out, vocab_size=vocab, val_fraction=0.1, workers=1, progress=False)
    )


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, trained, exported):  # noqa: F811
    """Paths every row may name: bad configs, two other datasets, a partial checkpoint, a doctored export."""
    import pydoc_data.topics

    tmp = tmp_path_factory.mktemp("bad_inputs")
    texts = list(pydoc_data.topics.topics.values())
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[: len(texts) // 3]))
    data400 = _prepare(corpus, tmp / "data400", 400)
    data_other = _prepare(corpus, tmp / "data_other", 512)  # 512 pieces, but not the run's tokenizer

    good = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": False},
        "zero_optimization": {"stage": 0},
    }
    paths = {
        "tmp": tmp,
        "corpus": corpus,
        "data": trained["data"],
        "data400": data400,
        "data_other": data_other,
        "checkpoint": trained["checkpoint"],
        "export": exported,
        "tok400": data400 / "tokenizer.model",
        "tok_other": data_other / "tokenizer.model",
    }
    paths["yaml"] = write_yaml(tmp / "tiny.yaml", MODEL, TRAIN)
    paths["ds"] = write_ds_config(tmp / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    jsons = {
        "json_unknown_key": {**good, "gradient_clip": 1.0},
        "json_unknown_zero_key": {**good, "zero_optimization": {"stage": 2, "overlap_com": True}},
        "json_bf16_string": {**good, "bf16": {"enabled": "false"}},
        "json_bf16_bool": {**good, "bf16": True},
        "json_removed": {**good, "elasticity": {"enabled": True}},
        "json_optimizer": {**good, "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}},
        "json_batch": {**good, "train_batch_size": 7},
        "json_clip": {**good, "gradient_clipping": -1.0},
        "json_fp16": {**good, "fp16": {"enabled": True}, "zero_optimization": {"stage": 2}},
        "json_zero2": {**good, "zero_optimization": {"stage": 2}},
        "json_load_universal": {**good, "checkpoint": {"load_universal": True}},
        "json_node_local": {**good, "checkpoint": {"use_node_local_storage": True}},
    }
    for name, config in jsons.items():
        paths[name] = tmp / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    paths["json_malformed"] = tmp / "malformed.json"
    paths["json_malformed"].write_text('{"train_micro_batch_size_per_gpu": 4,\n "bf16": {"enabled": tru}}')
    yamls = {
        "yaml_lr": (MODEL, {**TRAIN, "lr": "fast"}),
        "yaml_betas": (MODEL, {**TRAIN, "betas": 0.9}),
        "yaml_model_type": ({**MODEL, "rope_base": "fast"}, TRAIN),
        "yaml_engine_field": (MODEL, {**TRAIN, "micro_batch_size": 4}),
        "yaml_vocab": ({**MODEL, "vocab_size": 1000}, TRAIN),
        "yaml_deeper": ({**MODEL, "n_layer": 3}, TRAIN),
        "yaml_sequence_parallel": ({**MODEL, "n_head": 3, "n_embd": 48}, {**TRAIN, "sequence_parallel_size": 2}),
        "yaml_pipeline": (MODEL, {**TRAIN, "pipeline_parallel_size": 2}),
    }
    for name, (model, train) in yamls.items():
        paths[name] = write_yaml(tmp / f"{name}.yaml", model, train)
    paths["yaml_malformed"] = tmp / "malformed.yaml"
    paths["yaml_malformed"].write_text("model: {n_layer: 2\ntrain: {lr: 0.01}\n")
    paths["a_file"] = tmp / "a_file"
    paths["a_file"].write_text("not a folder\n")
    (tmp / "empty_folder").mkdir()
    paths["link_out"] = tmp / "link_out"
    paths["link_out"].symlink_to(tmp / "empty_folder")

    partial = tmp / "partial_run" / "checkpoints" / trained["checkpoint"].name
    shutil.copytree(trained["checkpoint"], partial)
    (partial / "COMPLETE").unlink()
    paths["partial"] = partial
    escape = tmp / "export_escape"
    shutil.copytree(exported, escape)
    config = json.loads((escape / "config.json").read_text())
    shutil.copyfile(exported / "tokenizer.model", tmp / "escaped.model")  # the right tokenizer, but outside
    config["tokenizer"]["file"] = "../escaped.model"
    (escape / "config.json").write_text(json.dumps(config))
    paths["export_escape"] = escape
    return {k: str(v) for k, v in paths.items()}


def check_row(proc, out: Path, code: int, fragment: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr[-3000:]}"
    assert "error: " in proc.stderr or "usage: " in proc.stderr
    assert not out.exists(), f"{out} was created"


CPU_TRAINS_FP16 = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
"""What DeepSpeed's CPU accelerator asks in is_fp16_supported: a CPU with AVX512-FP16 (Xeon since Sapphire Rapids)
trains fp16, so fp16 there is no bad input (the run trains). The refusal's wording on other CPUs is checked on any
CPU by tests/test_config_deepspeed.py (check_ds_config with fp16_supported=False)."""
NOT_BAD_HERE = {"train-json-fp16-on-cpu": CPU_TRAINS_FP16}


@pytest.mark.parametrize(
    "script, args, code, fragment",
    [
        pytest.param(
            *row[1:],
            id=row[0],
            marks=pytest.mark.skipif(NOT_BAD_HERE.get(row[0], False), reason="this CPU trains fp16 (CPU_TRAINS_FP16)"),
        )
        for row in ROWS
    ],
)
def test_bad_input_gives_one_clear_message(ctx, request, script, args, code, fragment):
    """Each row in a process of its own, forked from one that imported torch and DeepSpeed already."""
    out = Path(ctx["tmp"]) / request.node.callspec.id / "out"
    argv = [arg.format(out=out, **ctx) for arg in args]
    check_row(run_launch(script, *argv, check=False, timeout=300), out, code, fragment)


FIRST_ROW_OF_EACH_SCRIPT = {row[1]: row for row in reversed(ROWS)}


@pytest.mark.parametrize("script", sorted(FIRST_ROW_OF_EACH_SCRIPT))
def test_each_entry_script_gives_its_first_rows_message_from_a_fresh_interpreter(ctx, script):
    """The table's runs are forked; here each script's first row runs as a user types it: `python launch/x.py`."""
    row_id, _, args, code, fragment = FIRST_ROW_OF_EACH_SCRIPT[script]
    out = Path(ctx["tmp"]) / f"fresh-{row_id}" / "out"
    argv = [arg.format(out=out, **ctx) for arg in args]
    proc = run([sys.executable, REPO / "launch" / script, *argv], env=cpu_env(), check=False, timeout=300)
    check_row(proc, out, code, fragment)


def test_the_table_covers_every_entry_point_with_at_least_30_rows():
    scripts = {row[1] for row in ROWS}
    assert scripts == {PREPARE, TRAIN_PY, EXPORT, GENERATE, EVALUATE}
    assert len(ROWS) >= 30 and len({row[0] for row in ROWS}) == len(ROWS)
    assert sum(row[0].startswith("resume-") for row in ROWS) >= 3


def test_a_json_without_gradient_clipping_is_reported_as_deepspeeds_default(tmp_path, tiny_dataset):
    """DeepSpeed clips at 1.0 when the key is absent; the trainer reads the value back from the engine."""
    from deepspeed.runtime.constants import GRADIENT_CLIPPING_DEFAULT

    from ngpt_ds.train.ds_config import check_ds_config, gradient_clipping_of

    ds = {"train_micro_batch_size_per_gpu": 4, "bf16": {"enabled": False}, "zero_optimization": {"stage": 0}}
    assert GRADIENT_CLIPPING_DEFAULT == 1.0 and gradient_clipping_of(ds) == 1.0
    check_ds_config(
        dict(ds), world_size=1, tensor_parallel=1, source="x.json", fp16_supported=False, bf16_supported=True
    )
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    config = write_yaml(tmp_path / "c.yaml", MODEL, {**TRAIN, "max_steps": 1, "log_interval": 1})
    proc = run(
        [
            sys.executable,
            REPO / "launch/train.py",
            "--config",
            config,
            "--deepspeed_config",
            tmp_path / "ds.json",
            "--data",
            tiny_dataset,
            "--out",
            tmp_path / "run",
            "--no-progress",
        ]
    )
    assert (
        "DeepSpeed engine (read back): ZeRO stage 0, fp32, micro-batch 4 x accumulation 1 -> global batch 4, "
        "gradient clipping 1.0 (DeepSpeed's default: the JSON does not set it)"
    ) in proc.stdout
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["tokenizer_sha256"] and len(saved["tokenizer_sha256"]) == 64


def test_engine_that_reads_the_json_differently_stops_the_run():
    """The trainer's reading of the JSON is checked against the engine's (here: precision and clipping)."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train.ds_config import BatchPlan, check_engine_agrees, engine_settings

    class Engine:  # the getters deepspeed's engine exposes, answering what DeepSpeed parsed
        def zero_optimization_stage(self):
            return 2

        def bfloat16_enabled(self):
            return True

        def fp16_enabled(self):
            return False

        def train_micro_batch_size_per_gpu(self):
            return 4

        def gradient_accumulation_steps(self):
            return 1

        def train_batch_size(self):
            return 8

        def gradient_clipping(self):
            return 1.0

    plan = BatchPlan(micro_batch=4, grad_accum=1, data_parallel=2)
    agreeing = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}
    check_engine_agrees(engine_settings(Engine()), agreeing, plan)
    disagreeing = {
        "bfloat16": {"enabled": False},
        "bf16": {"enabled": False},
        "zero_optimization": {"stage": 2},
        "gradient_clipping": 0.5,
    }
    with pytest.raises(
        NgptConfigError,
        match=r"precision: DeepSpeed uses 'bf16', the trainer assumed 'fp32'; "
        r"gradient_clipping: DeepSpeed uses 1.0, the trainer assumed 0.5",
    ):
        check_engine_agrees(engine_settings(Engine()), disagreeing, plan)
