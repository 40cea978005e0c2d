"""Fault: with a step that a killed second save left moved aside (step_N.tmp-replaced), the dry run
planned `--resume OUT` (the run's folder) and `--resume OUT/checkpoints` from the step before it,
while the run puts the step back first and resumes from it: the dry run said step 2, the run took
step 4. (`--resume auto` and `--resume OUT/checkpoints/step_N` were made to agree; these two forms,
which also name the newest checkpoint, were not.)
"""

import pytest

from ngpt_ds.train.resume import resolve_resume

from conftest import REPO, torchrun

SAVER = REPO / "tests" / "workers" / "checkpoint_fault_worker.py"
CHOOSER = REPO / "tests" / "workers" / "resume_named_worker.py"


@pytest.mark.parametrize("folder", ["run", "checkpoints"])
def test_the_dry_run_plans_resume_of_the_run_folder_from_the_step_moved_aside(tmp_path, folder):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torchrun(SAVER, out, "save", 2, "A", nproc=1)
    torchrun(SAVER, out, "save", 4, "B", nproc=1)
    torchrun(SAVER, out, "save-killed-swapping", 4, "C", nproc=1, check=False)
    before = sorted(p.name for p in checkpoints.iterdir())
    assert "step_00000004.tmp-replaced" in before and "step_00000004" not in before
    named = str(out if folder == "run" else checkpoints)
    assert resolve_resume(out, named, lambda line: None) == checkpoints / "step_00000004.tmp-save"
    assert sorted(p.name for p in checkpoints.iterdir()) == before  # the dry run renames nothing
    chosen = torchrun(CHOOSER, out, named, nproc=1)  # the run: the same step, put back
    assert [line for line in chosen.stdout.splitlines() if " chose: " in line] == ["rank 0 chose: step_00000004"]
