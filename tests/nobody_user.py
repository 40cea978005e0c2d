"""Running a test's processes as `nobody` under a low `ulimit -u` (RLIMIT_NPROC binds no process of root's):
the user id (NOBODY), the preexec_fn that sets the limit and the user (nobody_with), and the lock the tests that do it
take turns on (nobody_alone)."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534
"""The user a test runs a process as under a low `ulimit -u` (RLIMIT_NPROC binds no process of root's)."""


def nobody_with(tasks: int):
    """A preexec_fn: in the child before exec, a `ulimit -u` of `tasks` (the hard limit kept) and, as root, the real
    user id of `nobody` (what the limit counts) with root's effective id (to read this checkout), CAP_SYS_ADMIN and
    CAP_SYS_RESOURCE (which lift the limit too) dropped from the bounding set: exec's root keeps neither."""
    import ctypes
    import resource

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NPROC, (tasks, resource.getrlimit(resource.RLIMIT_NPROC)[1]))
        if os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (21, 24):  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE; 24: PR_CAPBSET_DROP
                assert libc.prctl(24, cap, 0, 0, 0) == 0, ctypes.get_errno()
            os.setresuid(NOBODY, 0, 0)

    return limited


@contextlib.contextmanager
def nobody_alone() -> Iterator[None]:
    """Held while a test runs processes as `nobody` under a `ulimit -u` of 1 or 2 (tests/test_rdv38_thread_limit.py,
    tests/test_rdvb38_task_limit_commands.py): the limit counts every task of the user on the machine, so a process
    of `nobody` of the other file (the other pytest-xdist worker, or another pytest run) made the exec fail
    ("BlockingIOError: [Errno 11] Resource temporarily unavailable") or the line say 'it runs 2 now' where 1 was
    asserted. An exclusive flock on one file of the temporary folder: the tests take turns."""
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "ngpt_ds-tests-uid-nobody.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
