"""nccl27_trace's traced run, with NGPT_DS_TEST_RAISE_IN_LISTING set on one rank: that rank's listing of the
checkpoints inside the collective resume (resume._what_this_rank_sees) raises RuntimeError(the value), an error
no check there names (tests/test_review33_resume_listing_error_on_one_rank.py)."""

import os

from nccl27_trace import install, run_traced

RAISE_IN_LISTING = "NGPT_DS_TEST_RAISE_IN_LISTING"

if __name__ == "__main__":
    if os.environ.get(RAISE_IN_LISTING):
        from ngpt_ds.train import resume

        def fails(out_dir, resume_arg):
            raise RuntimeError(os.environ[RAISE_IN_LISTING])

        resume._what_this_rank_sees = fails
    run_traced(install)
