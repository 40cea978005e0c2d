"""An error on one rank while it checks the checkpoint that the ranks agreed to resume must reach every rank.

ngpt_ds/train/job.py: after the ranks verify the checkpoints together and agree on one
(resume.resolve_resume_on_all_ranks), each rank reads that checkpoint's config.yaml and DeepSpeed files on its own
(builder.choose_resume: the model, precision and seed checks, the layout). Only NgptConfigError was handed to the
agreement that follows; any other error (an I/O error of one node's view of shared storage) ended that rank alone
with a traceback, and the others waited in the agreement's all_gather_object until train.dist_timeout_s (gloo may
notice the closed socket sooner, and then fails with its own "Connection closed by peer" traceback, not the cause).
"""

from test_nccl31_rank_divergent_inputs import _same_calls, _traced

from conftest import tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml
from workers.nccl27_trace import RAISE_IN_RESUME


def test_io_error_checking_the_resumed_checkpoint_on_one_rank_stops_every_rank_with_its_message(tmp_path, tiny_dataset):
    yaml = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(2, dist_timeout_s=30))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    first = _traced(tmp_path, "first", train_flags(yaml, ds, tiny_dataset, out), [{}, {}])
    assert first["codes"] == [0, 0], first["logs"]

    flags = train_flags(yaml, ds, tiny_dataset, out, "--max-steps", "3")
    run = _traced(tmp_path, "eio", flags, [{}, {RAISE_IN_RESUME: "the node's view of the storage failed"}])
    assert run["codes"] == [2, 2], (run["codes"], run["logs"][0][-2000:], run["logs"][1][-2000:])
    config = out / "checkpoints" / "step_00000002" / "config.yaml"
    expected = f"rank 1: OSError: [Errno 5] the node's view of the storage failed: '{config}'"
    for log in run["logs"]:
        assert expected in log, log[-2000:]
    assert "Traceback" in run["logs"][1]  # the failing rank logs where it failed
    _same_calls(run)
    assert run["trace"][0][-1]["frame"] == "ngpt_ds/train/agreement.py:stop_all_if_any_failed"
    assert not (out / "checkpoints" / "step_00000003").exists()  # nothing trained past the refusal
