"""A checkpoint is whole and verified (faults: a second save of step_N rewrote files next to the old
COMPLETE, so a kill -9 left a complete-marked checkpoint with a truncated optimizer file; DeepSpeed's
`latest` was written before COMPLETE; a damaged checkpoint crashed --resume with a traceback).
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, cpu_env, free_port, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

WORKER = REPO / "tests" / "workers" / "checkpoint_save_worker.py"
MODEL_FILE, OPTIM_FILE = "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def save(out, step, payload, hang=None):
    """One save by the stand-in engine; with `hang`, SIGKILL it at that point of the save."""
    cmd = [sys.executable, WORKER, out, step, payload, free_port()] + (["--hang", hang] if hang else [])
    if hang is None:
        return run(cmd)
    proc = subprocess.Popen([str(c) for c in cmd], env=cpu_env(), stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == f"hanging {hang}"
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()


def test_kill_during_a_save_never_leaves_complete_next_to_partial_files_nor_latest_on_an_incomplete_tag(tmp_path):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    save(out, 4, "A")
    assert (checkpoints / "latest").read_text() == "step_00000004"

    # Killed after DeepSpeed wrote every file and `latest`, before the manifest: latest stays on step 4.
    save(out, 6, "B", hang="end")
    assert (checkpoints / "latest").read_text() == "step_00000004"
    assert not (checkpoints / "step_00000006" / "COMPLETE").exists()

    # Killed halfway through a second save of step 4: step 4 is still the first save, whole.
    save(out, 4, "C", hang="mid")
    step4 = checkpoints / "step_00000004"
    assert (step4 / MODEL_FILE).read_bytes() == b"A" * 1000
    assert (step4 / OPTIM_FILE).read_bytes() == b"A" * 3000
    from ngpt_ds.train.checkpoint import verify

    assert verify(step4) is None
    assert (checkpoints / "latest").read_text() == "step_00000004"

    # The next save removes the leftovers of both kills and points latest at itself.
    save(out, 6, "D")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000004", "step_00000006"]
    assert (checkpoints / "step_00000006" / OPTIM_FILE).read_bytes() == b"D" * 3000
    assert (checkpoints / "latest").read_text() == "step_00000006"
    # A completed second save of the same step replaces it whole.
    save(out, 6, "E")
    assert (checkpoints / "step_00000006" / OPTIM_FILE).read_bytes() == b"E" * 3000
    assert verify(checkpoints / "step_00000006") is None


def test_manifest_lists_every_file_and_verify_names_the_bad_one(tmp_path):
    from ngpt_ds.train.checkpoint import COMPLETE, build_manifest, is_legacy, verify

    folder = tmp_path / "step_00000002"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.pt").write_bytes(b"x" * 100)
    (folder / "sub" / "b.pt").write_bytes(b"y" * 10)
    manifest = build_manifest(folder, 2)
    assert manifest["files"] == {
        "a.pt": {"size": 100, "blake2b": hashlib.blake2b(b"x" * 100, digest_size=16).hexdigest()},
        "sub/b.pt": {"size": 10, "blake2b": hashlib.blake2b(b"y" * 10, digest_size=16).hexdigest()},
    }
    (folder / COMPLETE).write_text(json.dumps(manifest))
    assert verify(folder) is None

    (folder / "a.pt").write_bytes(b"x" * 60)
    assert verify(folder) == f"{folder / 'a.pt'} has 60 bytes, the COMPLETE manifest says 100 (truncated or rewritten)"
    (folder / "a.pt").write_bytes(b"x" * 99 + b"z")  # same size, other content
    assert verify(folder) == (
        f"{folder / 'a.pt'} does not match its blake2b-128 digest in the COMPLETE manifest (corrupted)"
    )
    (folder / "a.pt").write_bytes(b"x" * 100)
    (folder / "payload.pt").write_bytes(b"!")
    assert verify(folder) == f"{folder / 'payload.pt'} is not in the COMPLETE manifest (added after the save)"
    (folder / "payload.pt").unlink()
    (folder / "sub" / "b.pt").unlink()
    assert verify(folder) == f"{folder / 'sub' / 'b.pt'} is missing (listed in the COMPLETE manifest)"

    (folder / COMPLETE).write_text("step 2\n")  # an older ngpt_ds's marker: accepted, flagged as legacy
    assert verify(folder) is None and is_legacy(folder)


MODEL = tiny_ngpt()
TRAIN = tiny_train(40, checkpoint_interval=2, keep_checkpoints=3)


def complete_steps(out):
    # Only step_N: a save in progress has COMPLETE in its step_N.tmp-save folder just before the rename.
    return sorted(
        int(p.parent.name[5:]) for p in (out / "checkpoints").glob("step_*/COMPLETE") if p.parent.name[5:].isdigit()
    )


def test_damaged_checkpoint_after_a_kill_is_skipped_by_auto_and_refused_by_name(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", MODEL, TRAIN)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    args = [sys.executable, *train_cmd(config, ds, tiny_dataset, out)]
    # A single-process trainer (no launcher in between), SIGKILLed once it has checkpoints 2 and 4.
    with open(tmp_path / "first.log", "w") as log:
        trainer = subprocess.Popen(
            [str(a) for a in args], env=cpu_env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        deadline = time.monotonic() + 300
        while len(complete_steps(out)) < 2:
            assert trainer.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoints in time"
            time.sleep(0.05)
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait()
    assert (out / "train.lock").read_text() == f"host={socket.gethostname()} pid={trainer.pid}\n"
    steps = complete_steps(out)
    previous, newest = (out / "checkpoints" / f"step_{s:08d}" for s in steps[-2:])
    (damaged,) = newest.glob("*optim_states.pt")
    size = damaged.stat().st_size
    with open(damaged, "r+b") as f:  # a truncated copy, as a kill -9 during the old in-place resave left it
        f.truncate(size // 2)

    explicit = run([*args, "--resume", newest], check=False)
    assert explicit.returncode == 2, explicit.stderr[-3000:]
    assert "Traceback" not in explicit.stderr
    # A kill between the rename of the newest step into place and the update of `latest` (a window of one
    # fsync) leaves `latest` on the step before; the rerun repairs it and says so first.
    repaired = f"warning: checkpoints/latest named {previous.name}: a save was killed before updating it; it names {newest.name} now\n"
    assert explicit.stderr.removeprefix(repaired).startswith(
        f"error: --resume {newest}: the checkpoint is damaged: {damaged} has "
        f"{size // 2} bytes, the COMPLETE manifest says {size}"
    ), explicit.stderr

    auto = run([*args, "--max-steps", steps[-1] + 2])
    warnings = [line for line in auto.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: skipping checkpoint {newest.name}: {damaged} has {size // 2} bytes, the COMPLETE "
        f"manifest says {size} (truncated or rewritten). Using the one before it"
    ]
    assert (
        f"took over the stale lock of host={socket.gethostname()} pid={trainer.pid} (no longer running" in auto.stdout
    )
    assert f"resumed from {previous} at step {steps[-2]}" in auto.stdout
    # The damaged checkpoint is kept aside with the rest of the abandoned lineage, not deleted.
    (abandoned,) = (out / "checkpoints").glob("abandoned-*")
    assert (abandoned / newest.name / OPTIM_FILE).stat().st_size == size // 2
    assert complete_steps(out)[-1] == steps[-1] + 2
    assert (out / "checkpoints" / "latest").read_text() == f"step_{steps[-1] + 2:08d}"
    assert (out / "train.lock").read_text() == ""  # released at the end


def test_a_checkpoint_of_a_newer_ngpt_ds_stops_the_resume_instead_of_being_skipped(tmp_path):
    """Fault: a checkpoint whose manifest a newer ngpt_ds wrote (another install on some node, a downgrade)
    was "damaged: unknown manifest version" to --resume auto, which skipped it with a warning and trained on
    from the step before (moving the newer one aside). Now the resume stops and says why."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train.manifest import MANIFEST_FORMAT, MANIFEST_VERSION
    from ngpt_ds.train.resume import resolve_resume

    checkpoints = tmp_path / "run" / "checkpoints"
    older, newer = checkpoints / "step_00000002", checkpoints / "step_00000004"
    for folder in (older, newer):
        folder.mkdir(parents=True)
    (older / "COMPLETE").write_text("step 2\n")  # an older ngpt_ds's marker: loads unverified
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION + 1, "step": 4, "files": {}}
    (newer / "COMPLETE").write_text(json.dumps(manifest))
    with pytest.raises(NgptConfigError) as caught:
        resolve_resume(tmp_path / "run", "auto", warn=lambda line: None)
    assert str(caught.value) == (
        f"{newer} was written by a newer ngpt_ds (checkpoint manifest version {MANIFEST_VERSION + 1}; this ngpt_ds "
        f"reads version {MANIFEST_VERSION}). Run the ngpt_ds that wrote it on every node, or pass --resume with an "
        "older checkpoint to go back to it on purpose"
    )
    assert resolve_resume(tmp_path / "run", str(older), warn=lambda line: None) == older  # on purpose: allowed
