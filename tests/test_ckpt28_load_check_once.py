"""The load check unpickles each physical file of a checkpoint once, whatever names reach it (helper ckpt28,
session 28).

Fault: check_files_on_all_ranks (ngpt_ds.train.checkpoint_files) unpickled every `*.pt` name of the folder: a
crafted checkpoint holding one large file under many names (hard links, symbolic links to it), which its manifest
lists and verify reads once (manifest._digests, since 44305f4), had every rank unpickle that one file once per
name it got. Now each file (device and inode, links followed) is checked once, under its first name.
Real 2-rank gloo jobs (tests/workers/ckpt28_load_check.py records each rank's loads)."""

import json
import os

import torch

from ngpt_ds.train.manifest import build_manifest, verify, write_manifest

from conftest import REPO, torchrun

WORKER = REPO / "tests" / "workers" / "ckpt28_load_check.py"


def check_on_two_ranks(tmp_path, folder):
    out = tmp_path / "ranks.json"
    torchrun(WORKER, out, folder)
    return json.loads(out.read_text())


def test_a_file_under_many_names_is_unpickled_once_in_all(tmp_path):
    """Old code: 21 loads on the 2 ranks, 20 of them of one file (itself, 10 hard links and 9 symbolic links to
    it): `assert 21 == 2`. Now each file once."""
    folder = tmp_path / "step_00000002"
    folder.mkdir()
    torch.save({"w": torch.arange(6.0)}, folder / "mp_rank_00_model_states.pt")
    torch.save({"o": torch.ones(3)}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    big = folder / "mp_rank_00_model_states.pt"
    for i in range(10):
        os.link(big, folder / f"hard_{i:02d}.pt")
    for i in range(9):
        (folder / f"soft_{i:02d}.pt").symlink_to(big.name)
    write_manifest(folder, build_manifest(folder, 2))
    assert verify(folder) is None  # the manifest lists every name: a checkpoint that verifies
    ranks = check_on_two_ranks(tmp_path, folder)
    assert [r["error"] for r in ranks] == [None, None]
    loaded = sorted(path for r in ranks for path in r["loaded"])
    assert len(loaded) == 2
    assert sorted(os.stat(p).st_ino for p in loaded) == sorted(
        os.stat(folder / n).st_ino for n in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    )
    assert [len(r["loaded"]) for r in ranks] == [1, 1]  # one file each rank


def test_a_refused_file_reached_under_another_name_is_still_refused_on_every_rank(tmp_path):
    """The file checked once is still refused, naming it, on both ranks: a link to a file that is no torch file."""
    folder = tmp_path / "step_00000002"
    folder.mkdir()
    torch.save({"w": torch.arange(6.0)}, folder / "mp_rank_00_model_states.pt")
    (folder / "zz_bad.pt").write_bytes(b"not a torch file at all")
    (folder / "aa_link.pt").symlink_to("zz_bad.pt")
    ranks = check_on_two_ranks(tmp_path, folder)
    errors = [r["error"] for r in ranks]
    assert errors[0] == errors[1] and errors[0] is not None
    assert errors[0].startswith(f"{folder / 'zz_bad.pt'} was refused: ")
    # The bad file under its first name only (aa_link.pt), checked by rank 0, then by every rank to name it.
    link, model = str(folder / "aa_link.pt"), str(folder / "mp_rank_00_model_states.pt")
    assert [r["loaded"] for r in ranks] == [[link, link], [model, link]]
