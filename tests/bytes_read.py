"""The bytes a piece of work reads, from the kernel's count for this process (/proc/self/io rchar): what the tests
that a file's end is read, not the whole file (tests/test_week28_*.py), measure."""

from collections.abc import Callable


def bytes_read(work: Callable[[], object]) -> int:
    """The bytes this process read through read(2) and its kin while `work()` ran."""

    def rchar() -> int:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))

    before = rchar()
    work()
    return rchar() - before
