"""Shared test helpers: real multi-process launches, and skips that CI turns into failures."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**extra) -> dict:
    """Environment for child processes: CPU DeepSpeed, one thread per rank, the repo importable."""
    env = dict(os.environ)
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, *, timeout=600, cwd=REPO, env=None, check=True) -> subprocess.CompletedProcess:
    """Run a command; on failure show its output (the test fails with the real error)."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env or cpu_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def torchrun(script, *args, nproc=2, **kwargs) -> subprocess.CompletedProcess:
    """A real multi-process job on gloo: `torchrun --nproc_per_node N script args`."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        nproc,
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        free_port(),
        script,
        *args,
    ]
    return run(cmd, **kwargs)


def require_system(condition: bool, reason: str) -> None:
    """Skip a test that needs a system service (Slurm, MPI, root) on a user's machine; fail in CI."""
    if condition:
        return
    if os.environ.get("NGPT_DS_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"required system component missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small prepared dataset (vocab 512) from CPython's pydoc topics text: no download."""
    import pydoc_data.topics

    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    corpus = root / "corpus.jsonl"
    import json

    with corpus.open("w") as f:
        for text in pydoc_data.topics.topics.values():
            f.write(json.dumps({"text": text}) + "\n")
    return prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=root / "data", vocab_size=512, val_fraction=0.1, workers=1, progress=False
        )
    )


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


def read_metrics(out_dir: Path, key: str = "train/loss") -> list[dict]:
    """The run's metrics.jsonl records that hold `key` (training log lines by default; "eval/loss": evaluations)."""
    import json

    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if key in r]
