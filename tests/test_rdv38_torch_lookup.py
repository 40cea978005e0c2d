"""torch's own rendezvous is given MASTER_ADDR as the address ngpt_ds looked it up as, so that it does not look the
name up again outside train.dist_timeout_s. Real rank processes on gloo, launched as torchrun does; each rank's
resolver is a C library preloaded into it (torch's store looks names up in C++, where no Python stand-in reaches)
that answers the first lookup of MASTER_ADDR in the process at once and stalls each later one (a DNS server that
stops answering; one a test can set up without root).

The fault: torch's env:// rendezvous (torch/distributed/rendezvous.py, _env_rendezvous_handler) passed MASTER_ADDR
to its TCPStore, which looked the name up again, with no bound of its own, after ngpt_ds's bounded lookup
(rendezvous_failures._lookup) had answered: each rank stalled in the store until the watch's backstop, twice
train.dist_timeout_s and 10 s, and the job ended 'waited 30 s ... which neither met nor failed' with both ranks
there."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import cpu_env, free_port, require_system

RESOLVER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*lookup)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
static int asked;

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    lookup real = (lookup)dlsym(RTLD_NEXT, "getaddrinfo");
    const char *name = getenv("STALLED_NAME");
    if (node != NULL && name != NULL && strcmp(node, name) == 0) {
        if (__sync_fetch_and_add(&asked, 1) > 0)
            sleep(atoi(getenv("STALL_S")));
        return real("127.0.0.1", service, hints, res);
    }
    return real(node, service, hints, res);
}
"""

RANK = """
import sys, time
import deepspeed  # imported before the clock starts: the test times the rendezvous, not the imports
import torch.distributed as dist
from ngpt_ds import distributed
from ngpt_ds.train.builder import init_process_group

dist_env = distributed.discover()
start = time.monotonic()
init_process_group(dist_env, int(sys.argv[1]))
dist.barrier()
print(f"joined after {time.monotonic() - start:.1f} s", flush=True)
dist.destroy_process_group()
distributed.exit_process(0, joined=True)
"""


def test_a_lookup_that_stalls_after_ours_answered_does_not_hold_torchs_store(tmp_path):
    """Old code: both ranks ended by the backstop after 30 s ('assert 1 == 0', "error: rank 0 waited 30 s (twice
    train.dist_timeout_s, 10 s, and 10) for the job's rendezvous on rank0.example:P, which neither met nor failed").
    Now torch connects to 127.0.0.1, what rank0.example was looked up as, and the job meets at once."""
    require_system(shutil.which("cc") is not None, "no C compiler (cc) for the stalling resolver")
    (tmp_path / "resolver.c").write_text(RESOLVER)
    library = tmp_path / "resolver.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", library, tmp_path / "resolver.c", "-ldl"], check=True)
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    port, timeout_s = free_port(), 10
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(timeout_s)],
            env=cpu_env(
                RANK=rank,
                WORLD_SIZE=2,
                LOCAL_RANK=rank,
                LOCAL_WORLD_SIZE=2,
                MASTER_ADDR="rank0.example",
                MASTER_PORT=port,
                LD_PRELOAD=library,
                STALLED_NAME="rank0.example",
                STALL_S=40,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        ended = [(*proc.communicate(timeout=300), proc.returncode) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for rank, (out, err, code) in enumerate(ended):
        assert code == 0, (rank, err[-3000:])
        assert float(out.split("joined after ")[1].split(" s")[0]) < timeout_s - 2, (rank, out)
