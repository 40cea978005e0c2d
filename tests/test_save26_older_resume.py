"""Red-team of "resume from an older checkpoint" on 2 gloo ranks through launch/train.py (helper save26): a run
saved step_2, step_4, step_6; the user resumes from step_2. Nothing saved is destroyed (step_4 and step_6 move to
abandoned-<time>/ whole and verified), the user is told so in one line, `latest` and a later `--resume auto` name
the current lineage's newest step, each step is logged once; and the same for another run's checkpoint resumed
into a fresh --out. No fault found: this pins the behaviour at 2 ranks (test_checkpoint_lineage.py runs 1)."""

import json

from ngpt_ds.train import manifest

from conftest import read_metrics, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()


def steps(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))


def tensorboard_steps(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")]


def test_resume_from_an_older_step_at_two_ranks_keeps_every_checkpoint_and_auto_takes_the_current_lineage(
    tmp_path, tiny_dataset
):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    config = write_yaml(tmp_path / "m.yaml", MODEL, tiny_train(6, checkpoint_interval=2, keep_checkpoints=5))
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torchrun(*train_cmd(config, ds, tiny_dataset, out))
    assert steps(checkpoints) == ["step_00000002", "step_00000004", "step_00000006"]
    old = {name: manifest.marker_digest(checkpoints / name) for name in ("step_00000004", "step_00000006")}

    second = torchrun(
        *train_cmd(config, ds, tiny_dataset, out, "--resume", checkpoints / "step_00000002", "--max-steps", "4")
    )
    (abandoned,) = [p for p in checkpoints.iterdir() if p.name.startswith("abandoned-")]
    told = [line for line in second.stdout.splitlines() if "abandoned-" in line]
    assert told == [
        f"resuming from step 2: moved the 2 newer checkpoint folder(s) of the earlier lineage (step_00000004, "
        f"step_00000006) and its summary.json to {abandoned} (kept, not deleted), with a copy of its metrics.jsonl "
        "and tensorboard/"
    ]
    for name, digest in old.items():  # whole, verified, the same manifests
        assert manifest.marker_digest(abandoned / name) == digest and manifest.verify(abandoned / name) is None
    assert steps(checkpoints) == ["step_00000002", "step_00000004"]
    assert manifest.marker_digest(checkpoints / "step_00000004") != old["step_00000004"]  # the new lineage's
    assert (checkpoints / "latest").read_text() == "step_00000004"
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]
    assert tensorboard_steps(out) == [1, 2, 3, 4]
    assert tensorboard_steps(abandoned) == [1, 2, 3, 4, 5, 6]

    third = torchrun(*train_cmd(config, ds, tiny_dataset, out, "--resume", "auto"))
    assert "resuming from" not in "".join(line for line in third.stdout.splitlines() if "abandoned-" in line)
    assert steps(checkpoints) == ["step_00000002", "step_00000004", "step_00000006"]
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith("abandoned-")] == [abandoned.name]
    assert steps(abandoned) == ["step_00000004", "step_00000006"]
    assert manifest.marker_digest(abandoned / "step_00000006") == old["step_00000006"]
    assert json.loads((out / "summary.json").read_text())["step"] == 6
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert tensorboard_steps(out) == [1, 2, 3, 4, 5, 6]

    # Another run's checkpoint into a fresh --out: the source is only read; auto there continues the new run.
    shared = tmp_path / "shared"
    torchrun(*train_cmd(config, ds, tiny_dataset, shared, "--resume", abandoned / "step_00000004"))
    assert manifest.marker_digest(abandoned / "step_00000004") == old["step_00000004"]
    assert steps(shared / "checkpoints") == ["step_00000006"]
    assert json.loads((shared / "lineage.json").read_text())["resumed_from"] == str(abandoned / "step_00000004")
    again = torchrun(*train_cmd(config, ds, tiny_dataset, shared, "--resume", "auto", "--max-steps", "8"))
    assert not [line for line in again.stdout.splitlines() if "abandoned-" in line]
    assert steps(shared / "checkpoints") == ["step_00000006", "step_00000008"]
