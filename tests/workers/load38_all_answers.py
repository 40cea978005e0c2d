"""Worker for tests/test_load38_all_answers_traceback.py: one rank of a 2-rank gloo job that calls
ngpt_ds.train.collectives.all_answers once, its answer raising on rank 1 alone.

usage: load38_all_answers.py FAULT
FAULT: key (KeyError, a bug's), memory (MemoryError(), no message), lines (a RuntimeError of three lines, as torch
words many). Prints 'error: MESSAGE' on stderr and exits 2 on NgptConfigError, as ngpt_ds's commands do.
"""

import sys

import torch.distributed as dist

from ngpt_ds import log
from ngpt_ds.distributed import exit_process
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import collectives


def answer_of_this_rank(fault: str) -> int:
    if dist.get_rank() == 1:
        if fault == "key":
            raise KeyError("a bug on rank 1")  # the innermost frame the test looks for
        if fault == "memory":
            raise MemoryError()
        raise RuntimeError("first line of rank 1's error\n  second line\n\nthird line")
    return dist.get_rank()


if __name__ == "__main__":
    log.setup("INFO")
    dist.init_process_group("gloo")
    code = 0
    try:
        collectives.all_answers(lambda: answer_of_this_rank(sys.argv[1]), "answering the test")
    except NgptConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    dist.destroy_process_group()
    exit_process(code, joined=True)  # without interpreter teardown while gloo threads may run
