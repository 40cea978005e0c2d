"""Fault: a resume at another data-parallel size removed what an earlier conversion left at
checkpoints/step_N-universal.tmp-save with shutil.rmtree(ignore_errors=True), which silently leaves a link
(a run folder handed over or copied with links) or a folder it cannot delete. The mkdir after it
then failed, and every rerun stopped on "could not start DeepSpeed's ds_to_universal in ...: [Errno 17]
File exists", which named neither the cause nor the fix.

A link is now removed itself (never what it points to), and a leftover folder that cannot be removed is
named with the reason and the fix.
"""

import subprocess

from conftest import torchrun, train_cmd, write_ds_config


def test_a_link_left_at_the_conversions_work_folder_is_removed_and_the_resume_converts(reference_runs, tmp_path):
    """The old code stopped with exit 2 on 'File exists' at this and every rerun."""
    source = reference_runs["z2_ws2"] / "checkpoints" / "step_00000010"
    out = tmp_path / "one"
    (out / "checkpoints").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the trainer's\n")
    work = out / "checkpoints" / "step_00000010-universal.tmp-save"
    work.symlink_to(elsewhere, target_is_directory=True)
    ds = write_ds_config(tmp_path / "z2_dp1.json", stage=2, bf16=False, micro=4, accum=2)
    cmd = train_cmd(reference_runs.config, ds, reference_runs.data, out, "--resume", source, "--max-steps", "11")
    proc = torchrun(*cmd, nproc=1)
    universal = out / "checkpoints" / "step_00000010-universal"
    assert (
        f"resuming step 10 saved at data-parallel size 2 on data-parallel size 1 (ZeRO 2): converted it once into "
        f"the universal checkpoint {universal}, loaded it and renormalized the sphere matrices"
    ) in proc.stdout
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]  # what the link pointed to is untouched
    assert (elsewhere / "keep.txt").read_text() == "not the trainer's\n"
    assert not work.exists() and not work.is_symlink()


def test_a_link_to_a_file_goes_alone_and_a_folder_that_cannot_be_removed_is_named(tmp_path, mount_tmpfs):
    from ngpt_ds.train.reshape_convert import _remove_leftover

    kept = tmp_path / "kept.txt"
    kept.write_text("not the trainer's\n")
    work = tmp_path / "step_00000010-universal.tmp-save"
    work.symlink_to(kept)
    assert _remove_leftover(work) is None and not work.is_symlink()
    assert kept.read_text() == "not the trainer's\n"
    assert _remove_leftover(work) is None  # nothing there: nothing to do

    point = mount_tmpfs(1 << 20)
    stuck = point / "step_00000010-universal.tmp-save"
    (stuck / "converted").mkdir(parents=True)
    (stuck / "convert.log").write_text("an earlier conversion\n")
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
    problem = _remove_leftover(stuck)
    assert problem is not None and problem.startswith(
        f"cannot remove {stuck}, left there by an earlier conversion: Read-only file system ("
    ), problem
    assert problem.endswith("). Remove it and rerun"), problem
    assert stuck.is_dir()
