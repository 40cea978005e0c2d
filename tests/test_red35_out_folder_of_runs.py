"""--out a folder of runs (`--out runs` where `--out runs/x` was meant; helper red35, session 35).

Fault: a fresh run with --out runs, the folder the README's runs live in, was accepted: it wrote its config.yaml,
metrics.jsonl, train.lock and checkpoints/ around runs/a and runs/b, so that those were copied, moved and deleted with
it (`rm -rf runs`, to remove the mistaken run), and every later new run in runs/ was refused as nested in that run
('--out runs/c is inside the run folder runs'). It is now refused before anything is written, naming the runs it
holds and the fix. A folder of runs that already became a run (an earlier ngpt_ds) goes on, and so do runs in it.
"""

import shutil
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.out_folder import check_out_folder

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_out_on_a_folder_of_runs_is_refused_before_anything_is_written(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    runs = tmp_path / "runs"
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, runs / "a")])
    shutil.copytree(runs / "a", runs / "b", symlinks=True)
    (runs / "notes").mkdir()  # a folder that holds no run is no reason to refuse

    refused = run([sys.executable, *train_cmd(config, ds, tiny_dataset, runs)], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]  # old code: 0, a run around runs/a and runs/b
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert line == (
        f"error: --out {runs} holds the run folder(s) a, b: it is a folder of runs, not a run folder. A run there "
        "would hold them in its own folder (copied, moved and deleted with it), and new runs beside them would be "
        f"refused as nested in it. Pass a folder for this run (--out {runs}/<name>), or --out {runs}/a to continue "
        "that run"
    )
    assert sorted(p.name for p in runs.iterdir()) == ["a", "b", "notes"]  # nothing written there
    check_out_folder(runs / "c")  # a new run beside them is taken


def test_a_folder_of_runs_that_already_is_a_run_goes_on_and_so_do_its_runs(tmp_path):
    """Started around other runs by an earlier ngpt_ds: refusing it now would lock the user out of that run."""
    runs = tmp_path / "runs"
    for folder in (runs, runs / "a"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text("config_source: tiny.yaml\nmodel: {}\ntrain: {}\n")  # a run's own
    check_out_folder(runs)
    check_out_folder(runs / "a")


def test_many_runs_are_named_by_the_first_three_and_a_count(tmp_path):
    runs = tmp_path / "runs"
    for name in ("r1", "r2", "r3", "r4", "r5"):
        (runs / name).mkdir(parents=True)
        (runs / name / "train.lock").write_text("host=node1 pid=4242\n")  # a run that started and is held
    with pytest.raises(NgptConfigError, match=r"holds the run folder\(s\) r1, r2, r3 and 2 more: "):
        check_out_folder(runs)
