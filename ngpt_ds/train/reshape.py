"""The universal converter's child process: `python -m ngpt_ds.train.reshape SOURCE OUTPUT`, which
ngpt_ds.train.reshape_convert starts for a resume at another world size (README "Resuming at another world
size"). What a resume needs is decided in ngpt_ds.train.reshape_plan; the conversion is
ngpt_ds.train.reshape_convert, whose run_child this runs.
"""

import sys

from ngpt_ds.train.reshape_convert import run_child

if __name__ == "__main__":
    run_child(sys.argv[1:])
