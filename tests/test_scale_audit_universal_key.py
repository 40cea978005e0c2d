"""A DeepSpeed JSON that sets `"checkpoint": {"load_universal": true}` itself (DeepSpeed's documented
switch for its universal checkpoints) when the run resumes.

The trainer converts and loads universal checkpoints by itself when the data-parallel size changes
(ngpt_ds.train.reshape). The switch in the JSON made DeepSpeed read every ordinary step_N checkpoint as a
universal one: a run started with it trained and saved, and its restart with the same command (a
preemption, --resume auto) died in DeepSpeed's loader on every rank ("AssertionError: .../zero/
optimizer_state.pt containing optimizer global state is missing! Cannot proceed.", a traceback, exit 1).
"""

import sys

from conftest import read_metrics, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_a_json_that_sets_load_universal_is_refused_at_resume_naming_the_key(tmp_path, tiny_dataset):
    """Fault: resuming with checkpoint.load_universal true in the JSON stopped in a DeepSpeed
    AssertionError traceback (exit 1) instead of a startup error naming the key."""
    ds = write_ds_config(
        tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1, checkpoint={"load_universal": True}
    )
    out = tmp_path / "out"
    first = write_yaml(tmp_path / "first.yaml", tiny_ngpt(), tiny_train(1, checkpoint_interval=1))
    run([sys.executable, *train_cmd(first, ds, tiny_dataset, out)])  # a fresh start never loads: it trains
    assert [m["step"] for m in read_metrics(out)] == [1]

    longer = write_yaml(tmp_path / "longer.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=1))
    resumed = run([sys.executable, *train_cmd(longer, ds, tiny_dataset, out, "--resume", "auto")], check=False)
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert "error: the DeepSpeed config sets checkpoint.load_universal = True" in resumed.stderr
    assert "remove checkpoint.load_universal from the DeepSpeed config" in resumed.stderr
    assert [m["step"] for m in read_metrics(out)] == [1]  # refused before any step
