"""The same command naming the run's own newest checkpoint continues the run.

Fault: `--resume <out>/checkpoints/step_N` naming the newest step of the run's own lineage (after a
preemption, or copied from the stop message of an earlier session) moved nothing and recorded nothing in
<out>/lineage.json. The same command run again (a Slurm requeue, the next session of a --max-time job) then
took step_N as a rollback: it moved every checkpoint trained since into abandoned-* and trained from step N
again, so a job of several sessions never got past its second. Before: the rerun printed 'resuming from step
2: moved the 1 newer checkpoint folder(s) of the earlier lineage (step_00000003) ...' and resumed at step 2.
Now: lineage.json records such a PATH as a continuation point, and the rerun continues from the newest
checkpoint with one line saying so; --restart-lineage goes back to PATH on purpose.
"""

import json

from test_resume_same_command import abandoned_folders, checkpoint_at, step_names, train

from conftest import read_metrics


def test_the_same_command_naming_the_runs_newest_step_continues_instead_of_rolling_back(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    train(tmp_path, tiny_dataset, out, max_steps=2)
    named = out / "checkpoints" / "step_00000002"
    # --max-time 0: each session trains one step, saves it and stops, as a Slurm time limit does.
    command = ("--resume", named, "--max-steps", "8", "--max-time", "0")

    first = train(tmp_path, tiny_dataset, out, *command)
    assert f"resumed from {named} at step 2" in first.stdout
    assert step_names(out / "checkpoints") == ["step_00000001", "step_00000002", "step_00000003"]

    second = train(tmp_path, tiny_dataset, out, *command)
    assert "moved" not in second.stdout  # before: step_00000003 moved into abandoned-*
    assert [line for line in second.stdout.splitlines() if "already" in line] == [
        f"--resume {named} already resumed this run at step 2 ({out / 'lineage.json'}); continuing from its newest "
        f"checkpoint, step_00000003. Pass --resume {named} --restart-lineage to go back to it"
    ]
    assert f"resumed from {out / 'checkpoints' / 'step_00000003'} at step 3" in second.stdout
    assert abandoned_folders(out) == []
    assert step_names(out / "checkpoints") == [f"step_{s:08d}" for s in (1, 2, 3, 4)]
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]
    record = json.loads((out / "lineage.json").read_text())
    assert (record["resumed_from"], record["step"], len(record["complete_blake2b"])) == (str(named), 2, 32)


def test_a_continuation_point_is_added_to_a_lineage_that_grew_from_another_run(tmp_path):
    from ngpt_ds.train import lineage

    origin = checkpoint_at(tmp_path / "base/checkpoints/step_00000002", '{"step": 2}')
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    assert lineage.start_lineage(out, origin) is None
    newest = checkpoint_at(out / "checkpoints/step_00000005", '{"step": 5}')
    assert lineage.start_lineage(out, newest) is None  # --resume auto: nothing moves, nothing recorded
    assert "continued_from" not in json.loads((out / "lineage.json").read_text())
    for _ in range(2):  # --resume PATH naming the run's newest (the CLI asks same_command_resume first): recorded once
        assert lineage.same_command_resume(out, str(newest), newest, restart=False) == (str(newest), None)
        assert lineage.start_lineage(out, newest, named=True) is None
    record = json.loads((out / "lineage.json").read_text())
    assert record["resumed_from"] == str(origin)  # the lineage still grows from the other run's step 2
    assert [(e["resumed_from"], e["step"]) for e in record["continued_from"]] == [(str(newest), 5)]
    checkpoint_at(out / "checkpoints/step_00000007", '{"step": 7}')

    assert lineage.same_command_resume(out, str(origin), origin, restart=False)[0] == "auto"
    assert lineage.same_command_resume(out, str(newest), newest, restart=False) == (
        "auto",
        f"--resume {newest} already resumed this run at step 5 ({out / 'lineage.json'}); continuing from its "
        f"newest checkpoint, step_00000007. Pass --resume {newest} --restart-lineage to go back to it",
    )
    assert lineage.same_command_resume(out, str(newest), newest, restart=True) == (str(newest), None)
    # Deleted by retention since: the recorded path itself still continues.
    gone = newest.rename(tmp_path / "deleted")
    assert lineage.same_command_resume(out, str(newest), None, restart=False)[0] == "auto"
    # A rollback to an older step starts a new lineage: its record holds no continuation point.
    gone.rename(newest)
    older = checkpoint_at(out / "checkpoints/step_00000004", '{"step": 4}')
    lineage.start_lineage(out, older)
    assert "continued_from" not in json.loads((out / "lineage.json").read_text())
    assert lineage.same_command_resume(out, str(newest), None, restart=False) == (str(newest), None)
