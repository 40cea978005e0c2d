"""A 2-rank run whose --out is moved (mv) as the run ends (rank 0 writing summary.json) names the new place on every
rank, not the old place on ranks other than 0.

The fault (outb38's reading of run_end.py, session 38): RunEnd._finish worked out the line of what is left to resume
from (`_checkpoints_left`) on every rank BEFORE the all-reduce that tells the ranks rank 0's write failed, so a rank
other than 0 read --out before rank 0 met the move, and its line said 'Checkpoints up to step 6 are intact in
<old --out>/checkpoints ...' where rank 0's named the new place and the --out to rerun with. Real 2-rank gloo runs
(plain processes); rank 1 marks when it reaches the end's agreement, and rank 0 moves --out only after that mark.
"""

from moved_out import moved_ranks

from conftest import tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def test_every_rank_names_the_new_place_of_an_out_moved_as_the_run_ends(tmp_path, tiny_dataset):
    out, moved = tmp_path / "run", tmp_path / "moved"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    # moved_out.MOVE_OUT "close:0": rank 1 marks when it reaches the end's agreement (run_end.stop_all_if_unwritten,
    # its arguments worked out by then), rank 0 moves --out as its metrics logger closes, once the mark is there;
    # both ranks exit 74, with no traceback and one error line
    flags = train_flags(config, ds, tiny_dataset, out)
    errors = moved_ranks(flags, "close:0", moved, tmp_path / "moved.py", MARK=tmp_path / "rank1_at_the_end")
    left = (
        f"{out} was moved to {moved} while the run trained; its checkpoints, up to step 6, went with it: run the same "
        f"command with --out {moved} to continue from its newest"
    )
    for rank, error in enumerate(errors):
        # old code, rank 1: '... Checkpoints up to step 6 are intact in <out>/checkpoints ...'
        assert error.startswith("error: the run ended at step 6 (finished), but ") and error.endswith(f". {left}"), (
            rank,
            error,
        )
    assert not out.exists() and (moved / "checkpoints" / "step_00000006" / "COMPLETE").is_file()
