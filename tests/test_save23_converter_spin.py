"""Fault: the universal converter child was stopped only once it used no CPU time and read or wrote no byte for
CONVERTER_STALL_S. One spinning in a loop that never ends (CPU time, no I/O) counted as working: it was never
stopped, and every rank of the resume polled on for good. Now, where the system counts the child's I/O (Linux),
reading and writing no byte for CONVERTER_STALL_S stops it whatever its CPU time, with a message saying so.
Before: the 12 s stand-in below ran to its end against a 2 s bound (and the conversion then failed on its empty
output folder).
"""

import psutil
from test_reshape20_converter_stall import convert

SPINS = (  # it ends with the driver (Linux's parent-death signal), as the real converter does
    "import ctypes, signal, time; ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "print('stand-in: merging', flush=True)\n"
    "end = time.monotonic() + 12\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


def test_a_converter_spinning_on_cpu_without_io_is_stopped_and_every_rank_is_told(tmp_path):
    assert psutil.Process().io_counters().read_chars > 0  # this system counts a process's I/O
    found = convert(tmp_path, SPINS, 2)
    source = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert found["error"] == (
        f"DeepSpeed's ds_to_universal, converting {source}, used CPU time but read and wrote no byte for 2 seconds "
        "(a loop that never ends), so it was stopped. Its last lines: stand-in: merging. Check the filesystems of "
        f"{source} and {source.parent}, then rerun to convert again, or resume at 2 data-parallel ranks instead"
    )
    assert found["exit"] == -9 and not psutil.pid_exists(found["pid"])
    assert found["left"] == ["step_00000004"]  # no work folder, no step_N-universal
