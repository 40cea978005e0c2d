"""Journey (left32): the clock jumps backwards between two saves (an NTP step after a node's clock ran a day ahead).

The checkpoints written before the jump carry file times a day ahead of every later save's. Nothing that picks or
deletes a checkpoint may read those times: `--resume auto` must take the highest step, and retention must keep the
`keep_checkpoints` highest steps, however their folders are dated. Pinned here through launch/train.py (not a fault
today: both go by step number; a retention by mtime would delete the two newest saves and keep the older ones).
"""

import json
import os
import time

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

DAY_NS = 24 * 3600 * 10**9


def steps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step_"))


def date_ahead(root, by_ns):
    """Every file and folder under `root` (and `root`) dated `by_ns` ahead: written by a clock that ran ahead."""
    ahead = time.time_ns() + by_ns
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.utime(os.path.join(dirpath, name), ns=(ahead, ahead), follow_symlinks=False)
    os.utime(root, ns=(ahead, ahead))


def test_a_clock_that_jumped_back_neither_picks_nor_keeps_by_file_time(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    first = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, keep_checkpoints=2))
    train_run(first, ds, tiny_dataset, out, forked=True)
    assert steps(checkpoints) == ["step_00000002", "step_00000004"]
    date_ahead(out, DAY_NS)  # the clock then steps back a day: steps 2 and 4 look newer than anything saved later

    config = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(8, checkpoint_interval=2, keep_checkpoints=2))
    second = train_run(config, ds, tiny_dataset, out, "--resume", "auto", forked=True)
    said = second.stdout + second.stderr
    assert "step_00000004" in said and "step_00000002" not in said.replace("step_00000004", ""), said
    assert steps(checkpoints) == ["step_00000006", "step_00000008"]  # by mtime: step_2 and step_4 kept
    assert (checkpoints / "latest").read_text().strip() == "step_00000008"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == list(range(1, 9)), train_steps
