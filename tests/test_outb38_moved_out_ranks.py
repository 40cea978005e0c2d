"""A 2-rank run whose --out is moved (mv) early names the new place on every rank, and leaves nothing of its own at
the old place (helper outb38, session 38).

Faults, on real 2-rank gloo runs (plain processes, one per rank) whose rank 0 moves --out (os.rename, what `mv`
does on one filesystem) at a chosen point:
- ranks other than 0 held --out only from their first save (checkpoint.save's `hold`), rank 0 from the run's lock
  (run_lock.lock_run): a move before the first save stopped rank 1 with 'No checkpoint was saved yet
  (train.checkpoint_interval 4): running the same command again starts from step 0' (at the old place, a new run),
  where rank 0 named the new place and the --out to rerun with;
- a move between the lock and MetricsLogger's SummaryWriter: TensorBoard's makedirs made <old --out>/tensorboard
  again and the run trained on, its metrics (metrics.jsonl, the events) written at the old place, until the first
  save met the move; what the run had written there stayed (out_moved.remove_recreated cleans the save's files only).
"""

from pathlib import Path

from moved_out import moved_ranks

from conftest import tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def _moved_ranks(tmp_path: Path, dataset: Path, move_at: str, moved: Path, **env) -> tuple[Path, list[str]]:
    """The 2-rank run, --out moved by rank 0 at `move_at` (moved_out.MOVE_OUT: "metrics:N" after the metrics of step N
    are written, "init:0" as the metrics logger is made, before TensorBoard's writer; `env` OTHER=1: another program's
    file made at the old place right after): (the old --out, each rank's one error line), both ranks exit 74."""
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=4))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    return out, moved_ranks(train_flags(config, ds, dataset, out), move_at, moved, tmp_path / "moved.py", **env)


def _moved_before_the_first_save(out: Path, moved: Path) -> str:
    return (
        f"{out} was moved to {moved} while the run trained, before its first checkpoint (train.checkpoint_interval 4): "
        f"run the same command with --out {moved} to go on there, from step 0"
    )


def test_every_rank_names_the_new_place_of_an_out_moved_before_the_first_save(tmp_path, tiny_dataset):
    """Rank 1 held --out only from its first save: its line ended 'No checkpoint was saved yet ... starts from step
    0' (the old place), rank 0's named the new place."""
    moved = tmp_path / "moved"
    out, errors = _moved_ranks(tmp_path, tiny_dataset, "metrics:2", moved)
    for rank, error in enumerate(errors):
        assert error.endswith(f". {_moved_before_the_first_save(out, moved)}"), (rank, error)
    assert not out.exists()


def _metrics_before_the_first_write(out: Path, moved: Path) -> str:
    return (
        f"error: the metrics could not be written to {out / 'tensorboard'} (--out was moved or removed as the run "
        f"started). {out} is no longer the run's folder. {_moved_before_the_first_save(out, moved)}"
    )


def test_a_move_before_tensorboards_writer_stops_the_run_and_leaves_nothing_at_the_old_place(tmp_path, tiny_dataset):
    """A move between the run's lock and MetricsLogger's SummaryWriter: TensorBoard's makedirs made
    <old --out>/tensorboard again and the run trained 4 steps with its metrics there, until the save of step 4 met the
    move and left them: 'assert [] == ...' (the old place held 'metrics.jsonl', 'tensorboard',
    'tensorboard/events.out.tfevents...')."""
    moved = tmp_path / "moved"
    out, errors = _moved_ranks(tmp_path, tiny_dataset, "init:0", moved)
    assert not out.exists() or sorted(str(p.relative_to(out)) for p in out.rglob("*")) == []
    assert errors == [_metrics_before_the_first_write(out, moved)] * 2
    assert not out.exists()
    assert (moved / "train.lock").is_file() and not (moved / "tensorboard").exists()


def test_a_file_of_another_program_at_the_old_place_stays(tmp_path, tiny_dataset):
    """What the run made again at the old place goes (its events file, then the folders it made, when empty); a file
    another program put there stays, and the folders that hold it."""
    moved = tmp_path / "moved"
    out, errors = _moved_ranks(tmp_path, tiny_dataset, "init:0", moved, OTHER=1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["tensorboard", "tensorboard/other.txt"]
    assert errors == [_metrics_before_the_first_write(out, moved)] * 2
