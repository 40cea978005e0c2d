"""A checkpoint put in checkpoints/ during the run does not set the space a save needs (helper save25).

Fault: a save checked the free space against the size of the newest complete checkpoint in the folder, whatever
its step. Another run's checkpoint of a step above the run's, copied in during the run (retention neither counts
nor deletes it), or one whose manifest was crafted to claim 2^60 bytes, made every later save refuse with 'not
enough free space ... Nothing was written', and the run stopped (exit 74) with the disk nearly empty. The need is
now the size of the run's own newest checkpoint (one this process wrote, else one of a step at most the step
being saved).
"""

import json

from rank0_saves import WEIGHTS, NoParamsEngine, checkpoint_files, rank0_save

from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.lineage import start_lineage


def test_a_copied_in_checkpoint_claiming_2_to_the_60_bytes_does_not_refuse_the_runs_saves(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    own = rank0_save(checkpoints, 2, b"R" * 1000)
    crafted = checkpoint_files(checkpoints / "step_00000100", b"C" * 10)
    sealed = manifest.build_manifest(crafted, 100)
    sealed["files"][WEIGHTS]["size"] = 2**60
    (crafted / manifest.COMPLETE).write_text(json.dumps(sealed))
    assert manifest.checkpoint_bytes(crafted) == 2**60 + len("model: {}\n")
    assert checkpoint._before_save(NoParamsEngine(), checkpoints, 4) is None  # type: ignore[arg-type]
    assert checkpoint._need(NoParamsEngine(), checkpoints, 4) == (1010, "the size of step_00000002")  # type: ignore[arg-type]
    assert manifest.checkpoint_bytes(own) == 1010
    rank0_save(checkpoints, 4, b"S" * 2000)
    assert checkpoint._need(NoParamsEngine(), checkpoints, 6) == (2010, "the size of step_00000004")  # type: ignore[arg-type]
    assert manifest.marker_digest(crafted) is not None and (crafted / WEIGHTS).read_bytes() == b"C" * 10


def test_a_resumed_process_takes_the_size_of_the_newest_step_at_most_the_one_saved(tmp_path):
    """A process that has written nothing yet (just resumed) sizes its first save by the newest checkpoint of a
    step at most the one saved: the one it resumed from."""
    checkpoints = tmp_path / "run" / "checkpoints"
    for step, size in ((2, 1000), (4, 3000)):
        folder = checkpoint_files(checkpoints / checkpoint.tag_for(step), b"R" * size)
        manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    big = checkpoint_files(checkpoints / "step_00000009", b"B" * 9000)
    manifest.write_manifest(big, manifest.build_manifest(big, 9))
    assert checkpoint._need(NoParamsEngine(), checkpoints, 5) == (3010, "the size of step_00000004")  # type: ignore[arg-type]


def test_a_crafted_checkpoint_of_an_earlier_step_copied_in_does_not_size_the_first_save_of_a_resumed_run(tmp_path):
    """The same with a step below the one saved: resumed from step 2, the run's first save (of step 4) had taken
    the size of another run's step_00000003 copied in meanwhile."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    step2 = checkpoint_files(checkpoints / "step_00000002", b"R" * 1000)
    manifest.write_manifest(step2, manifest.build_manifest(step2, 2))
    assert start_lineage(out, step2) is None
    crafted = checkpoint_files(checkpoints / "step_00000003", b"C" * 10)
    sealed = manifest.build_manifest(crafted, 3)
    sealed["files"][WEIGHTS]["size"] = 2**60
    (crafted / manifest.COMPLETE).write_text(json.dumps(sealed))
    assert checkpoint._before_save(NoParamsEngine(), checkpoints, 4) is None  # type: ignore[arg-type]
    assert checkpoint._need(NoParamsEngine(), checkpoints, 4) == (1010, "the size of step_00000002")  # type: ignore[arg-type]
