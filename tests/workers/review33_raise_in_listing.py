"""nccl27_trace's traced run, with NGPT_DS_TEST_RAISE_IN_LISTING set on one rank: that rank's listing of the
checkpoints inside the collective resume (resume._what_this_rank_sees) raises RuntimeError(the value), an error
no check there names (tests/test_review33_resume_listing_error_on_one_rank.py). NGPT_DS_TEST_RAISE_IN_VERIFY: the
same in that rank's share of a checkpoint's verification (checkpoint.verify, inside resume.verify_on_all_ranks)."""

import os

from nccl27_trace import install, run_traced

RAISE_IN_LISTING = "NGPT_DS_TEST_RAISE_IN_LISTING"
RAISE_IN_VERIFY = "NGPT_DS_TEST_RAISE_IN_VERIFY"

if __name__ == "__main__":
    if os.environ.get(RAISE_IN_LISTING):
        from ngpt_ds.train import resume

        def fails(out_dir, resume_arg):
            raise RuntimeError(os.environ[RAISE_IN_LISTING])

        resume._what_this_rank_sees = fails
    if os.environ.get(RAISE_IN_VERIFY):
        from ngpt_ds.train import checkpoint

        def verify_fails(path, **share):
            raise RuntimeError(os.environ[RAISE_IN_VERIFY])

        checkpoint.verify = verify_fails
    run_traced(install)
