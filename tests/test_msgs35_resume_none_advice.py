"""A checkpoint that does not fit the run advises --resume none only where --resume none starts a run (helper msgs35).

Fault: preflight's refusal of a checkpoint whose model differs from the config's ended "start a new run with another
--out (or --resume none)"; with --resume auto, or --resume naming a step of the same --out, that --out holds
checkpoints, and --resume none there is refused ("--resume none, but .../checkpoints already holds checkpoints").
The advice there is another --out alone; a checkpoint from elsewhere named with a fresh --out keeps it (and there
--resume none trains).
"""

import sys

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def _error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return line


def test_resume_none_is_advised_only_where_it_starts_a_run(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    narrow = write_yaml(tmp_path / "narrow.yaml", tiny_ngpt(), tiny_train(1))
    wide = write_yaml(tmp_path / "wide.yaml", {**tiny_ngpt(), "n_embd": 64}, tiny_train(1))
    out, fresh = tmp_path / "a", tmp_path / "b"
    run([sys.executable, *train_cmd(narrow, ds, tiny_dataset, out)])
    step = out / "checkpoints" / "step_00000001"
    fix = "or start a new run with another --out"

    auto = _error(run([sys.executable, *train_cmd(wide, ds, tiny_dataset, out)], check=False))
    assert "model.n_embd = 32 in the checkpoint, 64 now" in auto, auto
    # old code: '... or start a new run with another --out (or --resume none)'
    assert auto.endswith(fix), auto
    refused = _error(run([sys.executable, *train_cmd(wide, ds, tiny_dataset, out, "--resume", "none")], check=False))
    assert refused.startswith(f"error: --resume none, but {out / 'checkpoints'} already holds checkpoints"), refused

    named = _error(run([sys.executable, *train_cmd(wide, ds, tiny_dataset, out, "--resume", step)], check=False))
    assert named.startswith(f"error: --resume {step}: the checkpoint does not fit this run"), named
    assert named.endswith(fix), named

    elsewhere = _error(run([sys.executable, *train_cmd(wide, ds, tiny_dataset, fresh, "--resume", step)], check=False))
    assert elsewhere.endswith(fix + " (or --resume none)"), elsewhere
    run([sys.executable, *train_cmd(wide, ds, tiny_dataset, fresh, "--resume", "none")])  # it trains: advice true
    assert (fresh / "checkpoints" / "step_00000001").is_dir()
