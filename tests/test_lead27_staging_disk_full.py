"""A preparation's staging folder whose owner line could not be written (a full disk) is still locked and named.

Fault (review of 2846aa1): `staging_dir` wrote "pid N on HOST" into the locked lock file before naming it
OWNER_FILE; an OSError from that write (ENOSPC, EDQUOT, plausible while preparing a large corpus) went to the
handler meant for a filesystem without flock, which deleted the lock file and left the descriptor open. The folder
then had no OWNER_FILE: a second preparation did not see the first under way, and once the first died no later
run removed its hidden leftover. Old code: the folder has no OWNER_FILE (assert False where is_file).
"""

import os
import signal
import subprocess
import sys

from conftest import cpu_env

CHILD = """\
import errno, os, sys, time
from pathlib import Path
from ngpt_ds.data import staging

class FullDisk:
    def __getattr__(self, name):
        return getattr(os, name)
    @staticmethod
    def write(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

staging.os = FullDisk()
folder = staging.staging_dir(Path(sys.argv[1]))
print(folder, flush=True)
time.sleep(600)
"""


def test_a_staging_folder_whose_owner_line_hit_a_full_disk_is_under_way_then_abandoned(tmp_path):
    from ngpt_ds.data import staging

    final = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(final)], stdout=subprocess.PIPE, text=True, env=cpu_env()
    )
    try:
        folder = tmp_path / os.path.basename(child.stdout.readline().strip())
        assert folder.is_dir() and folder.parent == tmp_path, folder
        assert (folder / staging.OWNER_FILE).is_file()
        assert (folder / staging.OWNER_FILE).read_bytes() == b""  # the owner line did not fit
        assert staging.under_way(final) == [folder]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert staging.remove_abandoned(final) == [folder]
    assert not folder.exists()
