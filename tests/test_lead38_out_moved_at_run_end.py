"""A 2-rank run whose --out is moved (mv) as the run ends (rank 0 writing summary.json) names the new place on every
rank, not the old place on ranks other than 0.

The fault (outb38's reading of run_end.py, session 38): RunEnd._finish worked out the line of what is left to resume
from (`_checkpoints_left`) on every rank BEFORE the all-reduce that tells the ranks rank 0's write failed, so a rank
other than 0 read --out before rank 0 met the move, and its line said 'Checkpoints up to step 6 are intact in
<old --out>/checkpoints ...' where rank 0's named the new place and the --out to rerun with. Real 2-rank gloo runs
(plain processes); rank 1 marks when it reaches the end's agreement, and rank 0 moves --out only after that mark.
"""

from pathlib import Path

from conftest import run_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

ROOT = Path(__file__).resolve().parents[1]

_MOVED_AT_END = r"""
import os, runpy, sys, time
from pathlib import Path
from ngpt_ds.train import metrics, run_end

out = Path(sys.argv[sys.argv.index("--out") + 1])
moved, mark = Path(os.environ["MOVED"]), Path(os.environ["MARK"])

real_stop = run_end.stop_all_if_unwritten
def stop(*args, **kwargs):
    if os.environ["RANK"] == "1":
        mark.touch()  # its arguments are worked out by now
    return real_stop(*args, **kwargs)
run_end.stop_all_if_unwritten = stop

real_close = metrics.MetricsLogger.close
def close(self):
    if os.environ["RANK"] == "0":
        deadline = time.monotonic() + 120
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.rename(out, moved)
    real_close(self)
metrics.MetricsLogger.close = close
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_every_rank_names_the_new_place_of_an_out_moved_as_the_run_ends(tmp_path, tiny_dataset):
    out, moved = tmp_path / "run", tmp_path / "moved"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    wrapper = tmp_path / "moved.py"
    wrapper.write_text(_MOVED_AT_END, encoding="utf-8")
    args = [wrapper, ROOT / "launch/train.py", *train_flags(config, ds, tiny_dataset, out)]
    codes, outputs = run_ranks(args, nproc=2, timeout=300, MOVED=moved, MARK=tmp_path / "rank1_at_the_end")
    assert codes == [74, 74], outputs
    left = (
        f"{out} was moved to {moved} while the run trained; its checkpoints, up to step 6, went with it: run the same "
        f"command with --out {moved} to continue from its newest"
    )
    for rank, output in enumerate(outputs):
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in output, (rank, output[-3000:])
        # old code, rank 1: '... Checkpoints up to step 6 are intact in <out>/checkpoints ...'
        assert errors[0].startswith("error: the run ended at step 6 (finished), but ") and errors[0].endswith(
            f". {left}"
        ), (rank, errors[0])
    assert not out.exists() and (moved / "checkpoints" / "step_00000006" / "COMPLETE").is_file()
