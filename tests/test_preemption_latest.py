"""DeepSpeed's `latest` file after a kill at the end of a save (README "Atomic saves": it always names the
newest complete checkpoint).

Fault: a SIGKILL between the rename of step_N into place and the rewrite of `latest` left `latest` on
the step before. When step_N was the run's last step, the rerun the README promises found the run
finished and wrote nothing, so `latest` named the older checkpoint for good: DeepSpeed's zero_to_fp32.py,
which the checkpoints folder holds and which reads `latest` by default, consolidated the older weights.
"""

from conftest import REPO, torchrun

WORKER = REPO / "tests" / "workers" / "preemption_latest_worker.py"


def test_a_kill_before_latest_names_the_new_step_is_repaired_by_the_rerun(tmp_path):
    out = tmp_path / "run"
    latest = out / "checkpoints" / "latest"
    torchrun(WORKER, out, "save", 2)
    killed = torchrun(WORKER, out, "save-killed-in-place", 4, check=False)
    assert killed.returncode != 0
    assert (out / "checkpoints" / "step_00000004" / "COMPLETE").is_file()
    assert latest.read_text() == "step_00000002"  # what the kill left

    chosen = torchrun(WORKER, out, "resume", 0)
    assert sorted(line for line in chosen.stdout.splitlines() if "chose" in line) == [
        "rank 0 chose: step_00000004",
        "rank 1 chose: step_00000004",
    ]
    assert latest.read_text() == "step_00000004"
    assert chosen.stdout.count("warning: checkpoints/latest named step_00000002") == 2, chosen.stdout
