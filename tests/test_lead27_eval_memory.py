"""evaluate.py's memory estimate (ngpt_ds.infer.eval_memory): what it reads, and the windows it counts.

Fault (review of 98c4f55): the estimate found the checkpoint through run_checkpoint.resolve_checkpoint, which
verifies every file of it against its manifest, and loading the model then verified them all again: a run folder
or checkpoint was read twice in full before the evaluation started, and a damaged newest checkpoint's "skipping"
warning was printed twice. Old code: that warning twice in the output.
"""

import shutil
import sys

from test_evalmem27_long_context_memory import evaluate as evaluate_with_memory
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


def test_the_estimate_counts_the_windows_the_split_holds_not_batch_size(tmp_path, trained, exported):  # noqa: F811
    """Fault (review of 98c4f55): the estimate assumed --batch-size windows at every context, while evaluate runs no
    more than the split holds: at a long context a forward of 2 windows was refused for the memory of 8. Old code:
    exit 2, 'a forward of 8 window(s) needs about ...'."""
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.infer.eval_memory import forward_memory, read_model_config

    config = read_model_config(exported)
    tokens = load_dataset_meta(trained["data"], verify_contents=False).splits["validation"].tokens
    context = tokens // 2 - 1  # at most 2 windows of context + 1 tokens
    two, eight = (forward_memory(config, n, context, 4).total for n in (2, 8))
    available = (two + eight) // 2
    proc = evaluate_with_memory(tmp_path, exported, trained["data"], available, "--contexts", str(context))
    assert proc.returncode == 0, proc.stderr
    row = proc.stdout.strip().splitlines()[-1].split()
    assert int(row[0]) == context and 1 <= int(row[2]) <= 2, proc.stdout  # context, windows
    refused = evaluate_with_memory(tmp_path, exported, trained["data"], two // 2, "--contexts", str(context))
    assert refused.returncode == 2, refused.stderr
    assert f"context {context}: a forward of 2 window(s) needs about" in refused.stderr, refused.stderr
