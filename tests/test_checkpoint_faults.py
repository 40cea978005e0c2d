"""Checkpoint saving and resume (faults: a kill -9 between the two renames of a second save
of the same step left step_N under neither name, so --resume auto started over from step 0 and the
next save deleted both copies; rank 0 raising anything but an OSError while sealing a save left the
other ranks waiting in a collective; a COMPLETE marker that was truncated, or crafted to be deeply
nested or to hold a huge number, was taken for an older ngpt_ds's marker and loaded unverified, or
crashed --resume auto with a traceback instead of being skipped; the dry run planned the resume from
an older step than the run, which puts a step moved aside back first; weights that do not fit the
checkpoint's model config ended --resume in a traceback).
"""

import json
import re
import shutil
import sys

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import manifest
from ngpt_ds.train.checkpoint import COMPLETE, tag_for
from ngpt_ds.train.lineage import start_lineage
from ngpt_ds.train.resume import newest_intact, resolve_resume

from conftest import REPO, run, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

WORKER = REPO / "tests" / "workers" / "checkpoint_fault_worker.py"
MODEL_FILE = "mp_rank_00_model_states.pt"


def lines(proc, word):
    return sorted(line for line in proc.stdout.splitlines() if f" {word}: " in line)


def test_a_kill_between_the_renames_of_a_second_save_of_a_step_loses_no_checkpoint(tmp_path):
    """Fault: a second save of step_N moved the complete step_N aside (step_N.tmp-replaced) before
    renaming the new one into place; SIGKILL in between left no step_N, --resume auto found nothing
    (a fresh start from step 0) and the next save deleted both leftovers, the only copies of step N."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torchrun(WORKER, out, "save", 4, "A", nproc=1)
    first = (checkpoints / "step_00000004" / MODEL_FILE).read_bytes()
    proc = torchrun(WORKER, out, "save-killed-swapping", 4, "B", nproc=1, check=False)
    assert proc.returncode != 0 and not lines(proc, "saved")
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]
    step4 = checkpoints / "step_00000004"
    # the second save, sealed before the kill, is put in place (save26); the step it replaced is removed
    assert first == b"A" * 1000 and (step4 / MODEL_FILE).read_bytes() == b"B" * 1000
    assert manifest.verify(step4) is None
    assert (checkpoints / "latest").read_text() == "step_00000004"
    saved = torchrun(WORKER, out, "save", 6, "C", nproc=1)
    assert lines(saved, "saved") == ["rank 0 saved: step_00000006"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000004", "step_00000006"]
    assert (step4 / MODEL_FILE).read_bytes() == b"B" * 1000 and manifest.verify(step4) is None


def test_a_step_moved_aside_is_not_put_back_while_another_trainer_holds_the_folder(tmp_path):
    """Fault: the repair above ran before the run lock was taken, so a second trainer started on a folder
    another one holds renamed step_N.tmp-replaced back and rewrote `latest` there (the holder may be
    between the two renames of its own save) before lock_run refused it. It now repairs only a folder no
    other process holds."""
    import subprocess

    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torchrun(WORKER, out, "save", 4, "A", nproc=1)
    torchrun(WORKER, out, "save-killed-swapping", 4, "B", nproc=1, check=False)
    before = sorted(p.name for p in checkpoints.iterdir())
    assert "step_00000004.tmp-replaced" in before and "step_00000004" not in before
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.lockf(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(out / "train.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        chosen = torchrun(WORKER, out, "resume", 0, "-")
        assert lines(chosen, "chose") == ["rank 0 chose: None", "rank 1 chose: None"]
        assert sorted(p.name for p in checkpoints.iterdir()) == before  # nothing renamed under the holder
    finally:
        holder.communicate(input="", timeout=30)  # the holder exits: its lock is released
    chosen = torchrun(WORKER, out, "resume", 0, "-")
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]


def test_the_dry_run_plans_the_resume_from_a_step_moved_aside_as_the_run_does(tmp_path):
    """Fault: the dry run (read-only, `resolve_resume`) did not see a step that a killed second save
    left moved aside: with --resume auto it planned the resume from the step before (step 2 here, where
    the run resumes from step 4), and it refused --resume step_N as missing. The real run puts the step
    back and resumes from it. It now plans the same resume, renaming nothing."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torchrun(WORKER, out, "save", 2, "A", nproc=1)
    torchrun(WORKER, out, "save", 4, "B", nproc=1)
    torchrun(WORKER, out, "save-killed-swapping", 4, "C", nproc=1, check=False)
    before = sorted(p.name for p in checkpoints.iterdir())
    assert "step_00000004.tmp-replaced" in before and "step_00000004" not in before
    notes: list[str] = []
    aside = checkpoints / "step_00000004.tmp-save"  # the sealed second save, which the run puts in place
    assert resolve_resume(out, "auto", notes.append) == aside
    assert resolve_resume(out, str(checkpoints / "step_00000004"), notes.append) == aside
    assert resolve_resume(out, str(checkpoints / "step_00000002"), notes.append) == checkpoints / "step_00000002"
    assert (
        notes
        == [
            "note: the run will first put step_00000004 in place from step_00000004.tmp-save (a sealed save, "
            "interrupted)"
        ]
        * 3
    )
    with pytest.raises(NgptConfigError, match="holds a checkpoint moved aside"):
        resolve_resume(out, "none", notes.append)
    assert sorted(p.name for p in checkpoints.iterdir()) == before  # read-only
    chosen = torchrun(WORKER, out, "resume", 0, "-")  # the run: the same checkpoint, put back
    assert lines(chosen, "chose") == ["rank 0 chose: step_00000004", "rank 1 chose: step_00000004"]


def test_rank_0_failing_to_seal_with_a_non_os_error_stops_every_rank_with_one_message(tmp_path):
    """Fault: `_hash_on_all_ranks` caught only OSError around rank 0's seal and listing; anything else
    (here a RecursionError) raised on rank 0 alone while rank 1 waited in the broadcast (it got gloo's
    'Connection closed by peer' instead of the reason)."""
    out = tmp_path / "run"
    proc = torchrun(WORKER, out, "save-seal-fails", 4, "A", check=False)
    tmp = out / "checkpoints" / "step_00000004.tmp-save"
    message = f"checkpoint of step 4 not saved: finishing {tmp}: RecursionError: maximum recursion depth exceeded"
    assert lines(proc, "got") == [f"rank 0 got: {message}", f"rank 1 got: {message}"], proc.stderr[-3000:]
    assert proc.returncode == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []  # nothing under step_4, no leftovers


def two_checkpoints(run):
    """step 2 and step 4, each a few files with a real manifest."""
    for step in (2, 4):
        folder = run / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / MODEL_FILE).write_bytes(bytes([step]) * 1000)
        (folder / "config.yaml").write_text("model: {}\n")
        manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000004"


def crafted(good_text):
    entry = json.loads(good_text)
    huge = json.dumps(entry).replace('"size": 1000', '"size": ' + "1" * 5000)
    return {
        "truncated": good_text[: len(good_text) // 2],  # a copy cut short: not JSON any more
        "nested": "[" * 200_000,  # json.loads recurses once per bracket
        "huge-number": huge,  # more digits than Python converts to an int
        "other-json": json.dumps({"step": 4}),  # JSON, but not a manifest nor the old 'step N' line
    }


def test_a_damaged_or_crafted_complete_marker_is_skipped_by_auto_not_loaded_unverified_nor_a_traceback(tmp_path):
    """Fault: any COMPLETE text that was not a JSON manifest counted as an older ngpt_ds's marker, so a
    truncated manifest let the checkpoint be loaded with no file checked; a deeply nested one raised
    RecursionError and one with a 5000-digit size ValueError out of --resume auto (not skipped)."""
    older, newer = two_checkpoints(tmp_path / "run")
    (newer / MODEL_FILE).write_bytes(b"\0" * 1000)  # damaged, which the manifest would tell
    good = (newer / COMPLETE).read_text()
    for kind, text in crafted(good).items():
        (newer / COMPLETE).write_text(text)
        assert manifest.is_legacy(newer) is False, kind
        assert manifest.checkpoint_bytes(newer) is None, kind
        problem = manifest.verify(newer)
        assert problem == (
            f"{newer / COMPLETE} is damaged: it is neither a checkpoint manifest nor the 'step N' line of an "
            "older ngpt_ds"
        ), (kind, problem)
        warnings = []
        assert resolve_resume(tmp_path / "run", "auto", warnings.append) == older, kind
        assert warnings == [f"warning: skipping checkpoint {newer.name}: {problem}. Using the one before it"], kind
    (newer / COMPLETE).write_text("step 4\n")  # what an older ngpt_ds wrote: still accepted, as legacy
    assert manifest.is_legacy(newer) and manifest.verify(newer) is None


def test_weights_that_do_not_fit_the_checkpoints_model_config_are_an_error_not_a_traceback(tmp_path, tiny_dataset):
    """Fault: a checkpoint whose weights do not have the shapes its config.yaml describes (altered, and
    its manifest rewritten to match) ended --resume in torch's load_state_dict traceback."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])
    step2 = out / "checkpoints" / "step_00000002"
    states = torch.load(step2 / MODEL_FILE, weights_only=False)
    states["module"]["embed.weight"] = torch.zeros(513, 32)  # one row more than vocab_size 512
    torch.save(states, step2 / MODEL_FILE)
    manifest.write_manifest(step2, manifest.build_manifest(step2, 2))
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out, "--max-steps", "4")], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {step2}: its weights do not fit the model its config.yaml describes (size mismatch for "
        "embed.weight: copying a param with shape torch.Size([513, 32]) from checkpoint, the shape in current "
        "model is torch.Size([512, 32]).); the checkpoint was altered, or its config.yaml comes from another "
        "run. Resume from another checkpoint, or start a new run with --resume none and another --out"
    ]


def test_resuming_from_another_folders_checkpoint_moves_every_checkpoint_of_out_aside(tmp_path):
    """Fault: --resume other/checkpoints/step_2 --out run moved aside only run's steps after 2, so
    run's own step_2 (another lineage: another seed) stayed as if it were the resumed run's and
    retention deleted it (reproduced: keep 2, saves at 6 and 8 left run/checkpoints with step_6 and
    step_8 only)."""
    other_2, _ = two_checkpoints(tmp_path / "other")
    mine = two_checkpoints(tmp_path / "run")
    digests = [(p / COMPLETE).read_bytes() for p in mine]
    checkpoints = tmp_path / "run" / "checkpoints"
    # The run folder's logs are that other lineage's too: they go with its checkpoints, whole.
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 4, "train/loss": 5.0}\n')
    (tmp_path / "run" / "tensorboard").mkdir()
    (tmp_path / "run" / "tensorboard" / "events.out.tfevents.1").write_bytes(b"run's own events")
    line = start_lineage(tmp_path / "run", other_2)
    (abandoned,) = [p for p in checkpoints.iterdir() if p.name.startswith("abandoned-")]
    assert line == (
        f"resuming from {other_2}, outside {checkpoints}: moved its 2 checkpoint folder(s) of another lineage "
        f"(step_00000002, step_00000004), and its metrics.jsonl and tensorboard/, to {abandoned} (kept, not deleted)"
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == [abandoned.name]
    # lineage.json: the new lineage grows from other_2 (tests/test_resume_same_command.py).
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "lineage.json"]
    assert json.loads((tmp_path / "run" / "lineage.json").read_text())["resumed_from"] == str(other_2)
    assert (abandoned / "metrics.jsonl").read_text() == '{"step": 4, "train/loss": 5.0}\n'
    assert (abandoned / "tensorboard" / "events.out.tfevents.1").read_bytes() == b"run's own events"
    assert [(abandoned / tag_for(s) / COMPLETE).read_bytes() for s in (2, 4)] == digests
    assert all(manifest.verify(abandoned / tag_for(s)) is None for s in (2, 4))
    # Within the folder, as before: only the steps after the one resumed move.
    again = two_checkpoints(tmp_path / "again")
    assert "moved the 1 newer checkpoint folder(s)" in start_lineage(tmp_path / "again", again[0])
    assert [p.name for p in (tmp_path / "again" / "checkpoints").iterdir() if p.name.startswith("step_")] == [
        "step_00000002"
    ]


def test_a_link_to_a_folder_inside_a_checkpoint_fails_verification(tmp_path):
    """Fault: a link to a folder added to a checkpoint after its save passed verify (the listing does
    not enter linked folders, so 'not in the manifest' missed its files), and the .pt files under it
    escaped check_files_on_all_ranks' unpickling check, though DeepSpeed reads a universal
    checkpoint's zero/<param>/*.pt by path, through the link."""
    older, newer = two_checkpoints(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere" / "embed.weight"
    elsewhere.mkdir(parents=True)
    torch.save({"param": torch.zeros(2)}, elsewhere / "fp32.pt")
    (newer / "zero").symlink_to(elsewhere.parent, target_is_directory=True)
    problem = f"{newer / 'zero'} is a link to a folder; a checkpoint holds only folders and regular files"
    assert manifest.verify(newer) == problem
    (newer / COMPLETE).write_text("step 4\n")  # an older ngpt_ds's marker: the listing is checked all the same
    assert manifest.verify(newer) == problem
    warnings = []
    assert resolve_resume(tmp_path / "run", "auto", warnings.append) == older
    assert warnings == [f"warning: skipping checkpoint {newer.name}: {problem}. Using the one before it"]


def test_a_checkpoint_copied_under_another_steps_name_is_not_resumed_as_that_step(tmp_path):
    """Fault: step_2 copied as step_8 was accepted, so --resume auto took it as step 8: the run
    said 'already trained to step 8/6: nothing to do' (reproduced with the trainer) while its weights
    and state were step 2's; with a larger --max-steps it trained on from step 2 under step 8's lineage."""
    older, newer = two_checkpoints(tmp_path / "run")
    copied = shutil.copytree(older, older.with_name("step_00000008"))
    problem = (
        f"{copied} holds the checkpoint of step 2 (its {COMPLETE} marker) under the name of step 8: renamed, "
        "or copied under another step's name"
    )
    warnings = []
    assert resolve_resume(tmp_path / "run", "auto", warnings.append) == newer
    assert warnings == [f"warning: skipping checkpoint {copied.name}: {problem}. Using the one before it"]
    with pytest.raises(NgptConfigError, match=re.escape(f"--resume {copied}: the checkpoint is damaged: {problem}")):
        resolve_resume(tmp_path / "run", str(copied))
    # Its weights are intact: reading them (export, generate: newest_intact) does not depend on the name.
    assert manifest.verify(copied) is None and newest_intact(tmp_path / "run" / "checkpoints") == copied
