"""A host name's lookup (socket.getaddrinfo) bounded in time, for the lookups a job makes before its ranks meet:
MASTER_ADDR on every rank (ngpt_ds.rendezvous_failures) and rank 0's own host name under mpirun without MASTER_ADDR
(ngpt_ds.host_address).

getaddrinfo has no timeout of its own: a slow or unreachable DNS server held the caller for the resolver's retries
(some 5 s a try, times its attempts and servers), and for good where the resolver never gives up (a hung NSS module).
The lookup runs in a daemon thread the caller waits for; at the bound the thread is left behind, still waiting, and
ends with the process. This module only looks up: what a caller says about an answer that did not come is its own.
"""

from __future__ import annotations

import socket
import threading


def look_up(host: str, port: int, answer: list, answered: threading.Event) -> None:
    """Append to `answer` what socket.getaddrinfo(host, port) gives for a TCP connection (a list of its 5-tuples), or
    the error it raised, and then set `answered`: the body of `look_up_within`'s thread, for a caller that starts
    one of its own."""
    try:
        answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except (OSError, UnicodeError) as err:  # gaierror; UnicodeError: not a valid host name (a label too long)
        answer.append(err)
    answered.set()


def look_up_within(host: str, port: int, wait_s: float, thread_name: str) -> list[tuple] | Exception | None:
    """`host`'s addresses for a TCP connection to `port` (socket.getaddrinfo's list), the error the lookup raised
    (socket.gaierror, or UnicodeError for a name no resolver accepts), or None where no answer came within `wait_s`.
    Raises RuntimeError where the thread cannot start (a low `ulimit -u`): the caller's to say."""
    answer: list = []
    answered = threading.Event()
    threading.Thread(target=look_up, args=(host, port, answer, answered), name=thread_name, daemon=True).start()
    if not answered.wait(max(0.0, wait_s)):
        return None
    return answer[0]
