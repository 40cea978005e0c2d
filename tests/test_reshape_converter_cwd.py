"""Fault: the universal converter a resume at another data-parallel size starts is `python -m
ngpt_ds.train.reshape`, which puts the working folder first on sys.path. Run from a folder holding another
`ngpt_ds` package (a checkout of another version, a shared /tmp), the child imported and ran that package's
converter, not the trainer's: here a stand-in that exits 7, which failed the resume ("could not convert ...
(exit 7)"); another version's converter would have converted the checkpoint by its own rules.

The child now runs in the package's own root, with the checkpoint and output paths made absolute (so a
relative --out still works).
"""

from conftest import torchrun, train_cmd, write_ds_config

STAND_IN = """import pathlib, sys
pathlib.Path(__file__).with_name("ran").write_text("the converter of another ngpt_ds ran\\n")
sys.exit(7)
"""


def test_the_converter_is_the_trainers_own_whatever_the_working_folder_holds(reference_runs, tmp_path):
    folder = tmp_path / "checkout"
    (folder / "ngpt_ds" / "train").mkdir(parents=True)
    (folder / "ngpt_ds" / "__init__.py").write_text("")
    (folder / "ngpt_ds" / "train" / "__init__.py").write_text("")
    (folder / "ngpt_ds" / "train" / "reshape.py").write_text(STAND_IN)
    source = reference_runs["z2_ws2"] / "checkpoints" / "step_00000010"
    ds = write_ds_config(tmp_path / "z2_dp1.json", stage=2, bf16=False, micro=4, accum=2)
    # --out relative to the working folder, as an operator types it there.
    cmd = train_cmd(reference_runs.config, ds, reference_runs.data, "one", "--resume", source, "--max-steps", "11")
    proc = torchrun(*cmd, nproc=1, cwd=folder)
    assert not (folder / "ngpt_ds" / "train" / "ran").exists()
    assert (
        "resuming step 10 saved at data-parallel size 2 on data-parallel size 1 (ZeRO 2): converted it once into "
        "the universal checkpoint one/checkpoints/step_00000010-universal, loaded it and renormalized the sphere "
        "matrices"
    ) in proc.stdout
    assert (folder / "one" / "checkpoints" / "step_00000011" / "COMPLETE").is_file()
