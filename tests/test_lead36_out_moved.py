"""A run whose --out is moved (mv) while it trains stops saying so, not that its checkpoints are intact where they
were.

The fault (found by red36): the run stopped at its next write (exit 74) with "Checkpoints up to step N are intact in
<old --out>/checkpoints (--resume auto continues from the newest ...)", a folder that no longer existed, and a fix that
does not apply (the metrics line's "Check its filesystem ... and what holds that name"). A real run of 2 steps, resumed
with no save due for 1,000 steps (so the move meets a metrics write, not a save), moved by the test as it trains."""

import subprocess
import sys

from conftest import cpu_env, run, tiny_ngpt, tiny_train, train_cmd, wait_while_running, write_ds_config, write_yaml


def test_a_run_whose_out_is_moved_names_the_move_and_the_fix(tmp_path, tiny_dataset):
    out, moved = tmp_path / "run", tmp_path / "moved"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2000, checkpoint_interval=1000, log_interval=1))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out, "--max-steps", "2")])
    proc = subprocess.Popen(
        [sys.executable, *map(str, train_cmd(config, ds, tiny_dataset, out, "--resume", "auto"))],
        env=cpu_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_while_running(
            proc,
            lambda: '{"step": 4,' in (out / "metrics.jsonl").read_text(errors="replace"),
            "the resumed run reaching step 4",
        )
        out.rename(moved)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 74, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # old code: "... Checkpoints up to step N are intact in <out>/checkpoints (--resume auto continues ...)"
    assert f"are intact in {out / 'checkpoints'}" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    # rank 0 holds --out from the run's lock (ngpt_ds.train.out_moved): the line names the new place (out38)
    assert f"{out} is no longer the run's folder. {out} was moved to {moved} while the run trained" in errors[0]
    assert errors[0].endswith(
        f"its checkpoints, up to step 2, went with it: run the same command with --out {moved} to continue from its "
        "newest"
    ), errors[0]
    assert (moved / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
