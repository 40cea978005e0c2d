"""The startup removes only the log-copy staging folders the trainer names (`.copying-abandoned-<time>`), never
another `.copying-*` folder someone keeps in checkpoints/.

The fault (before-stop reading of dbfb7f0): `lineage._remove_killed_copies` removed every folder of checkpoints/
whose name starts with '.copying-', a name the trainer writes only as '.copying-abandoned-<time>'."""

from ngpt_ds.train import lineage


def test_only_the_trainers_copy_staging_folders_are_removed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    ours = checkpoints / ".copying-abandoned-20261205T224736Z"
    theirs = checkpoints / ".copying-notes"
    for folder in (ours, theirs):
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("{}\n")
    lineage._remove_killed_copies(checkpoints)
    assert not ours.exists()
    assert (theirs / "metrics.jsonl").read_text() == "{}\n"  # old code: removed
