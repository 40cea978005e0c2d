"""Fault (session 33): an error raised on one rank alone inside a collective of the resume that no check there
names left the ranks' collectives paired wrongly. review33 fixed it for the listing of the checkpoints (6452bb5);
the verification of each candidate (resume.verify_on_all_ranks: each rank hashes its share of the files, then one
all_gather_object) had the same fault: a RuntimeError (or an I/O error the check does not turn into a verdict) in
rank 1's share sent rank 1 to job.train's agreement while rank 0 waited in the verdicts' gather. Every such gather
of the resume now goes through ngpt_ds.train.collectives.all_answers: every rank stops naming rank 1's error, exit 2,
after the same collectives."""

from test_nccl31_rank_divergent_inputs import _same_calls
from test_review33_resume_listing_error_on_one_rank import _traced

from conftest import tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def test_an_error_verifying_a_checkpoint_on_one_rank_stops_every_rank_with_its_message(tmp_path, tiny_dataset):
    yaml = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(2, dist_timeout_s=30))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    first = _traced(tmp_path, "first", train_flags(yaml, ds, tiny_dataset, out), [{}, {}])
    assert first["codes"] == [0, 0], first["logs"]

    flags = train_flags(yaml, ds, tiny_dataset, out, "--max-steps", "3")
    run = _traced(tmp_path, "err", flags, [{}, {"NGPT_DS_TEST_RAISE_IN_VERIFY": "rank 1 could not read its share"}])
    # The old code: rank 1 stopped naming rank 0's verdict, rank 0 ended in gloo's "Connection closed by peer"
    assert run["codes"] == [2, 2], (run["codes"], run["logs"][0][-2000:], run["logs"][1][-2000:])
    for log in run["logs"]:
        assert "rank 1: RuntimeError: rank 1 could not read its share" in log, log[-2000:]
    _same_calls(run)
    assert not (out / "checkpoints" / "step_00000003").exists()
