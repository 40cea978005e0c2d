"""A --max-time shorter than the startup plus a step and its save: a clear error on every rank of a real 2-rank gloo
job, before any step, instead of a step trained and saved past the limit (ngpt_ds/train/stopping.py)."""

from conftest import run_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_a_max_time_shorter_than_the_startup_is_an_error_before_any_step(tmp_path, tiny_dataset):
    """Fault: --max-time 2 (the startup of a tiny 2-rank run takes longer) trained step 1, saved it past the limit and
    exited 0 with 'stopping at step 1 (--max-time reached)': under train.sbatch a 'stopped' run is requeued, one
    step a job, each save at risk of Slurm's kill. Now every rank exits 2 with one line naming the limit, the
    startup and the save estimate, and nothing is trained or saved. Old code: 'assert [0, 0] == [2, 2]'."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(20, checkpoint_interval=5))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    flags = train_cmd(config, ds, tiny_dataset, out, "--max-time", 2)
    codes, outputs = run_ranks(flags, timeout=240)
    assert codes == [2, 2], outputs[0][-3000:]
    # Each rank's own startup time is in its line; when the two differ the agreed error names rank 0's ("error:
    # rank 0: --max-time ..."), as for any problem the ranks word differently (ngpt_ds/train/agreement.py).
    line = "--max-time 2 s leaves no time to train: it counts from the rank's start, this rank's startup"
    (said,) = [text for text in outputs[0].splitlines() if line in text]
    assert said.startswith(("error: --max-time", "error: rank 0: --max-time")), said
    assert "Nothing was trained or saved; raise --max-time, or leave it out" in outputs[0]
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert not (out / "summary.json").exists()
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""
