"""The fix ngpt-prepare's address-limit line gives (ngpt_ds.limits, d04b24f) where the limit is also
the hard limit.

Fault: the line always said "Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script
before ngpt-prepare)". bash's `ulimit -v N` sets the soft and the hard limit, and a scheduler's memory limit is a
hard one: there a user's `ulimit -v unlimited` fails ("bash: ulimit: virtual memory: cannot modify limit: Operation
not permitted", as user nobody after `ulimit -v 3000000`). Now the line says so where soft and hard are equal and the
user is not root, and names the hard limit where the soft one is below it; root (who may raise both) and an
unlimited hard limit keep the line as it was."""

from __future__ import annotations

import resource

from ngpt_ds.limits import _raise

GIB = 1 << 30
AS_BEFORE = "Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script before ngpt-prepare)"


def test_a_hard_limit_is_not_answered_with_ulimit_v_unlimited():
    # old code (one line for every case): the AS_BEFORE advice, which fails for a user at the hard limit
    assert _raise(5 * GIB, 5 * GIB, root=False) == (
        "It is also the hard limit, which only an administrator or the job's scheduler raises: ask for a higher one "
        "(the job's virtual memory request), or run ngpt-prepare where the limit is higher"
    )
    assert _raise(5 * GIB, 8 * GIB, root=False) == (
        "Raise the limit, up to its hard limit of 8.0 GiB (`ulimit -v 8388608`, in the shell or job script before "
        "ngpt-prepare)"
    )
    assert _raise(5 * GIB, resource.RLIM_INFINITY, root=False) == AS_BEFORE
    assert _raise(5 * GIB, 5 * GIB, root=True) == AS_BEFORE
