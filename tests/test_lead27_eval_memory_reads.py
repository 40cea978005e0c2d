"""evaluate.py's memory estimate reads a checkpoint's config.yaml, not its weights.

Fault (review of 98c4f55): the estimate found the checkpoint through run_checkpoint.resolve_checkpoint, which
verifies every file of it against its manifest, and loading the model then verified them all again: a run folder
or checkpoint was read twice in full before the evaluation started, and a damaged newest checkpoint's "skipping"
warning was printed twice. Old code: that warning twice in the output.
"""

import shutil
import sys

from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, run


def test_a_run_folders_checkpoints_are_verified_once_by_evaluate(tmp_path, trained):  # noqa: F811
    from ngpt_ds.infer.eval_memory import read_model_config

    checkpoint = trained["checkpoint"]
    step = int(checkpoint.name.removeprefix("step_"))
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, run_dir / "checkpoints" / checkpoint.name)
    newer = run_dir / "checkpoints" / f"step_{step + 1:08d}"
    shutil.copytree(checkpoint, newer)
    damaged = max((f for f in newer.rglob("*.pt")), key=lambda f: f.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[:-1] + bytes([damaged.read_bytes()[-1] ^ 1]))

    config = read_model_config(run_dir)
    assert config is not None and config.vocab_size == read_model_config(checkpoint).vocab_size

    cmd = [sys.executable, REPO / "launch" / "evaluate.py", run_dir, "--data", trained["data"], "--device", "cpu"]
    proc = run([*cmd, "--multiples", "1", "--windows", "2"], check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert output.count(f"skipping checkpoint {newer.name}") == 1, output
