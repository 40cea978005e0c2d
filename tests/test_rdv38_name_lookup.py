"""ngpt_ds.name_lookup.look_up_within: the bounded host-name lookup both MASTER_ADDR's lookup (rendezvous_failures)
and rank 0's own host name's (host_address) use, a public function of a module of its own.

The fault: host_address imported rendezvous_failures' private `_look_up` and started its thread itself, a copy of
the thread-and-wait code of rendezvous_failures._lookup that a change to either could leave behind. Old code:
"ModuleNotFoundError: No module named 'ngpt_ds.name_lookup'" (or, where an editable install supplies the new module,
"AttributeError: module 'ngpt_ds.host_address' has no attribute 'look_up_within'"). The resolver that stalls is socket.getaddrinfo
replaced in this process (a DNS server that stalls is not something a test can set up without root)."""

from __future__ import annotations

import socket
import threading
import time

from ngpt_ds import host_address, name_lookup, rendezvous_failures


def test_an_answer_an_error_and_no_answer_within_the_bound(monkeypatch):
    found = name_lookup.look_up_within("127.0.0.1", 29500, 5, "test-lookup")
    assert isinstance(found, list) and [info[4] for info in found] == [("127.0.0.1", 29500)], found
    real = socket.getaddrinfo
    release = threading.Event()

    def resolver(host, *args, **kwargs):
        if host == "stalls.example":
            release.wait(30)  # a DNS server that does not answer; released at the test's end
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host == "unknown.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    found = name_lookup.look_up_within("unknown.example", 0, 5, "test-lookup")
    assert isinstance(found, socket.gaierror) and found.errno == socket.EAI_NONAME, found
    start = time.monotonic()
    try:
        assert name_lookup.look_up_within("stalls.example", 0, 0.5, "test-lookup") is None
        assert 0.5 <= time.monotonic() - start < 2, time.monotonic() - start
    finally:
        release.set()


def test_the_two_lookups_use_it_and_no_private_name_crosses_modules():
    assert host_address.look_up_within is name_lookup.look_up_within
    assert rendezvous_failures.name_lookup is name_lookup
    assert not hasattr(rendezvous_failures, "_look_up") and not hasattr(host_address, "_look_up")
