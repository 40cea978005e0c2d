"""The config files of the tests' end-to-end runs: the `model:` and `train:` sections of the tiny runs
(tiny_ngpt, tiny_train), their YAML file (write_yaml) and the DeepSpeed JSON (write_ds_config). Re-exported by
conftest, where the tests import them from."""

from pathlib import Path


def tiny_ngpt() -> dict:
    """The `model:` section of the end-to-end runs: nGPT, 2 blocks of width 32 and 2 heads, 32 tokens
    of context (a fresh dict: a test may change its copy)."""
    return {"arch": "ngpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}


def tiny_train(max_steps: int, **fields) -> dict:
    """The `train:` section of the end-to-end runs: lr 1e-2, a loss record every step, no evaluation and
    no periodic checkpoint (2 batches when a test turns evaluation on), and `fields` on top."""
    return {
        "max_steps": max_steps,
        "lr": 1e-2,
        "log_interval": 1,
        "eval_interval": 0,
        "eval_batches": 2,
        "checkpoint_interval": 0,
        "peak_tflops": 1.0,
        **fields,
    }


def write_ds_config(path: Path, *, stage: int, bf16: bool, micro: int, accum: int, **extra) -> Path:
    import json

    config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": stage},
        **extra,
    }
    path.write_text(json.dumps(config))
    return path


def write_yaml(path: Path, model: dict, train: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"model": model, "train": train}))
    return path
