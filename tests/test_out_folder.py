"""--out pointed at the wrong folder (faults: `--config exp/config.yaml --out exp` replaced the user's
config with the run's effective config, which the same command then refused to read; an --out inside a
checkpoint rewrote that checkpoint's config.yaml and added files, so the checkpoint failed its
manifest; a fresh run in a folder holding someone's metrics.jsonl truncated it to nothing).
"""

import shutil
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import manifest, out_folder, run_lock
from ngpt_ds.train.config import RunConfig

from conftest import run, start_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_a_config_kept_in_the_out_folder_is_not_replaced_by_the_run(tmp_path, tiny_dataset):
    """Fault: with --config exp/config.yaml --out exp the trainer overwrote exp/config.yaml (comments
    and all) with its effective config; rerunning the same command then failed: 'unknown top-level
    section(s) config_source, ...'."""
    exp = tmp_path / "exp"
    exp.mkdir()
    config = write_yaml(exp / "config.yaml", tiny_ngpt(), tiny_train(2))
    original = "# lr sweep, run 3\n" + config.read_text()
    config.write_text(original)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, exp)], check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"error: --out {exp} holds a config.yaml the trainer did not write" in proc.stderr
    assert config.read_text() == original
    assert sorted(p.name for p in exp.iterdir()) == ["config.yaml"]  # nothing written, not even the lock


def fake_step(folder):
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"w" * 100)
    (folder / "config.yaml").write_text("model: {}\n")
    manifest.write_manifest(folder, manifest.build_manifest(folder, 4))
    return folder


def test_an_out_inside_a_checkpoint_is_refused_before_anything_is_written(tmp_path):
    """Fault: --out runs/a/checkpoints/step_N (the checkpoint given where --resume was meant) started a
    fresh run inside it: its config.yaml was rewritten and train.lock, metrics.jsonl, ... added, and
    step_N then failed verification ('config.yaml has 1277 bytes, the COMPLETE manifest says 1251')."""
    step = fake_step(tmp_path / "run" / "checkpoints" / "step_00000004")
    before = sorted(p.name for p in step.iterdir())
    for out in (step, step / "new"):
        with pytest.raises(NgptConfigError) as refused:
            run_lock.acquire(out)
        assert str(refused.value).startswith(f"--out {out} is inside the checkpoint {step}: "), str(refused.value)
        assert f"--resume {step} to resume from it" in str(refused.value)
    assert sorted(p.name for p in step.iterdir()) == before and manifest.verify(step) is None


def test_a_folder_of_someone_elses_metrics_is_refused_and_run_folders_are_not(tmp_path):
    """Fault: a fresh run truncates --out/metrics.jsonl to the records of steps <= 0 (all of them, for
    anyone else's file) and replaces summary.json, whatever folder --out names."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    with pytest.raises(NgptConfigError, match=r"is not a run folder \(no train.lock, no run config.yaml\) but "):
        run_lock.acquire(home)
    assert (home / "metrics.jsonl").read_text() == '{"epoch": 1, "acc": 0.5}\n'
    assert sorted(p.name for p in home.iterdir()) == ["metrics.jsonl"]

    # What the trainer itself leaves is accepted: a run folder, a copy of a run's checkpoints, a new folder.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    assert next(iter(RunConfig.__annotations__)) == out_folder.RUN_CONFIG_FIRST_KEY  # to_yaml's first line
    (earlier / "config.yaml").write_text("config_source: a.yaml\nmodel: {}\ntrain: {}\nout_dir: earlier\n")
    (earlier / "metrics.jsonl").write_text('{"step": 1}\n')
    copied = tmp_path / "copied"
    fake_step(copied / "checkpoints" / "step_00000004")
    (copied / "metrics.jsonl").write_text('{"step": 1}\n')
    for out in (earlier, copied, tmp_path / "new", tmp_path / "new" / "deeper"):
        run_lock.acquire(out).release()


def test_another_trainers_deepspeed_checkpoints_are_refused(tmp_path):
    """Fault: --out on a DeepSpeed run folder of another trainer (checkpoints/global_step100, latest,
    zero_to_fp32.py) trained there and exited 0: DeepSpeed's save replaced `latest` (global_step100 ->
    step_00000002) and its recovery scripts, so that trainer's load_checkpoint and zero_to_fp32.py then read
    ngpt_ds's checkpoint."""
    other = tmp_path / "other"
    (other / "checkpoints" / "global_step100").mkdir(parents=True)
    (other / "checkpoints" / "latest").write_text("global_step100")
    (other / "checkpoints" / "zero_to_fp32.py").write_text("# edited by its owner\n")
    with pytest.raises(NgptConfigError) as err:
        run_lock.acquire(other)
    assert str(err.value) == (
        f"--out {other} is not a run folder (no train.lock, no run config.yaml) but holds checkpoints/latest, "
        "checkpoints/zero_to_fp32.py, which a run would replace or truncate. Choose another --out"
    )
    assert (other / "checkpoints" / "latest").read_text() == "global_step100"
    assert sorted(p.name for p in other.iterdir()) == ["checkpoints"]


def test_a_run_folder_whose_config_was_cut_short_still_resumes_but_a_users_config_there_is_refused(tmp_path):
    """The run's own config.yaml, emptied by a kill while it was rewritten, does not lock the run out;
    a user's model/train config put into a run folder is still refused."""
    out = tmp_path / "run"
    run_lock.acquire(out).release()  # leaves train.lock: a run folder
    (out / "config.yaml").write_text("")
    run_lock.acquire(out).release()
    (out / "config.yaml").write_text("config_source: x\nmodel:\n  n_la")  # cut mid-way: not YAML any more
    run_lock.acquire(out).release()
    (out / "config.yaml").write_text("model: {}\ntrain: {}\n")
    with pytest.raises(NgptConfigError, match=r"holds a config.yaml the trainer did not write"):
        run_lock.acquire(out)


def test_an_out_in_another_runs_checkpoints_folder_is_refused(tmp_path):
    """Fault: --out runs/a/checkpoints (where --out runs/a or --resume was meant), or a folder below it, trained
    a new run from scratch among run a's checkpoints: its config.yaml, train.lock, metrics.jsonl, tensorboard/
    and checkpoints/ went into runs/a/checkpoints, and with them whenever they were copied or deleted."""
    run = tmp_path / "a"
    run_lock.acquire(run).release()
    fake_step(run / "checkpoints" / "step_00000004")
    checkpoints = run / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    for out, verb in ((checkpoints, "is"), (checkpoints / "b", "is inside"), (checkpoints / "b" / "c", "is inside")):
        with pytest.raises(NgptConfigError) as refused:
            run_lock.acquire(out)
        assert str(refused.value) == (
            f"--out {out} {verb} {checkpoints}, the checkpoints folder of the run {run}: a run there would start "
            f"from scratch among that run's checkpoints. --out is the run folder: pass --out {run} to continue "
            f"that run, --resume {checkpoints}/step_N to start from one of its checkpoints, or a new folder "
            "outside it"
        )
    assert sorted(p.name for p in checkpoints.iterdir()) == before
    # A folder named checkpoints that holds runs is no run's checkpoints folder.
    run_lock.acquire(tmp_path / "checkpoints" / "ngpt").release()


def test_an_out_in_the_dataset_is_refused_on_every_rank_before_anything_is_written(tmp_path, tiny_dataset):
    """Fault: --out set to the --data folder (or a folder in it) trained into the dataset, and the next
    `prepare_data.py --out <dataset> --overwrite` deleted the run's checkpoints with the old dataset."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    before = sorted(p.name for p in data.iterdir())
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    for out, verb in ((data, "is"), (data / "run", "is inside")):
        ranks = start_ranks(train_cmd(config, ds, data, out))
        for rank, proc in enumerate(ranks):
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 2, (rank, stderr[-3000:])
            assert (
                f"error: --out {out} {verb} the prepared dataset {data} (meta.json, tokenizer.model): the run's "
                "checkpoints and logs there would be deleted with the dataset when it is prepared again with "
                f"--overwrite. Choose an --out outside {data}"
            ) in stderr.splitlines(), (rank, stderr[-3000:])
            assert "Traceback" not in stderr
        assert sorted(p.name for p in data.iterdir()) == before


def test_a_run_already_in_a_dataset_folder_still_resumes_and_a_new_one_is_refused(tmp_path, tiny_dataset):
    """Fault (in the refusal above, when it was new): a run started inside a dataset before that refusal
    existed could not resume, so its requeue chain stopped with exit 2. prepare_data.py --overwrite and --merge
    now refuse a dataset that holds a run, so only a new run is refused there."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    old_run = data / "runs" / "r1"
    fake_step(old_run / "checkpoints" / "step_00000004")
    run_lock.check_out_folder(old_run)  # resumes as before
    with pytest.raises(NgptConfigError, match=rf"^--out {data / 'runs' / 'r2'} is inside the prepared dataset {data} "):
        run_lock.check_out_folder(data / "runs" / "r2")


def test_the_dry_run_refuses_the_out_folders_the_run_refuses(tmp_path, tiny_dataset):
    """Fault: `--dry-run` printed 'every startup check passed ... a new run in <out>' for an --out the run
    then refused (a user's config.yaml there, here the dataset folder): the dry run never checked --out."""
    from ngpt_ds.train.builder import TrainOptions
    from ngpt_ds.train.dry_run import dry_run

    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    options = TrainOptions(
        deepspeed_config=str(ds), config=str(config), data=str(tiny_dataset), out=str(tiny_dataset), world_size=2
    )
    with pytest.raises(NgptConfigError, match=rf"^--out {tiny_dataset} is the prepared dataset {tiny_dataset} "):
        dry_run(options)
    options.out = str(tmp_path / "run")
    assert dry_run(options).endswith(f"resume: none; a new run in {tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()


def test_an_out_through_a_link_to_nothing_is_named_as_such(tmp_path):
    """Fault: --out a symbolic link whose target does not exist (a moved or unmounted run folder) was refused
    as '--out ... is not writable (File exists)', which names neither the link nor the fix."""
    from ngpt_ds.train import preflight

    (tmp_path / "runs").symlink_to(tmp_path / "unmounted")
    for out in (tmp_path / "runs", tmp_path / "runs" / "a"):
        with pytest.raises(NgptConfigError) as refused:
            preflight.check_writable(out)
        assert str(refused.value) == (
            f"--out {out}: {tmp_path / 'runs'} is a symbolic link to {tmp_path / 'unmounted'}, which does not "
            "exist; create that folder, or choose another --out"
        )
    (tmp_path / "unmounted").mkdir()
    preflight.check_writable(tmp_path / "runs" / "a")
    assert not (tmp_path / "unmounted" / "a").exists()


@pytest.mark.parametrize("option", ["--out", "--data", "--config", "--resume"])
def test_an_empty_path_option_is_refused_not_taken_as_left_out(option, capsys):
    """Fault: `--out "$RUN_DIR"` with the variable unset gave --out '', which the trainer took as no --out: the
    run went into runs/<preset>, resuming and extending whatever run was there; an empty --data trained on
    the default corpus, an empty --config the ngpt_tiny preset."""
    from ngpt_ds.cli.train import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(["--deepspeed_config", "z2.json", option, ""])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"error: argument {option}: empty (an unset shell variable?); give a value, or leave the option out; "
        "--help lists the options\n"
    )


def test_a_tilde_in_out_is_the_home_folder_the_out_checks_look_at(tmp_path, monkeypatch):
    """Fault: `--out=~/runs/x` (no shell expands a ~ after '=') trained in a folder named '~' in the working folder,
    while run_lock's --out checks expanded it and looked at $HOME/runs/x."""
    from pathlib import Path

    from ngpt_ds.train.builder import run_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    assert run_folder("~/runs/x", Path("c.yaml")) == tmp_path / "runs" / "x"
    assert run_folder(None, Path("exp/c.yaml")) == Path("runs/c")
