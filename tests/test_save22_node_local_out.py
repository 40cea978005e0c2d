"""An --out that is not the same folder on every node (helper save22, session 22).

Fault: with --out on a node-local disk (the same path, another folder on each node) the run trained a whole
checkpoint_interval and stopped at its first save with exit 74 ('rank 1: hashing ...: No such file or
directory'): a save writes one folder rank 0 lists, hashes with the other ranks and renames. Now every rank
refuses it at startup, right after rank 0 takes the run lock, with exit 2 and one line naming the rank and --out.

Two gloo ranks on this host stand for two nodes: rank 1 runs in its own mount namespace, where a tmpfs
mounted over --out holds the train.lock an earlier run on that "node" left.
"""

import re
import socket
import subprocess

from conftest import require_system, start_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

ON_ITS_OWN_DISK = """
import os, sys
args = sys.argv[2:]
if os.environ["RANK"] == "1":  # its own mount namespace: a tmpfs over --out holding an earlier run's train.lock
    script = 'mount -t tmpfs -o size=8m tmpfs "$0" && echo "host=node7 pid=4242" > "$0/train.lock" && exec "$@"'
    os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.argv[1],
                          sys.executable, *args])
os.execv(sys.executable, [sys.executable, *args])
"""


def test_an_out_that_differs_between_nodes_is_refused_at_startup_on_every_rank(tmp_path, tiny_dataset):
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    require_system(probe.returncode == 0, f"a mount namespace with a tmpfs needs root: {probe.stderr.strip()}")
    out = tmp_path / "run"
    out.mkdir()
    wrapper = tmp_path / "on_its_own_disk.py"
    wrapper.write_text(ON_ITS_OWN_DISK)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, dist_timeout_s=60))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    ranks = start_ranks([wrapper, out, *train_cmd(config, ds, tiny_dataset, out)])
    results = [proc.communicate(timeout=300) for proc in ranks]
    messages = []
    for rank, (proc, (_, stderr)) in enumerate(zip(ranks, results)):
        assert proc.returncode == 2, (rank, stderr[-3000:])
        assert "Traceback" not in stderr
        (message,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        messages.append(message)
    assert messages[0] == messages[1]
    expected = (
        f"error: --out {out}: rank 1 does not see the train.lock rank 0 wrote there (rank 0 reads "
        f"'host={socket.gethostname()} pid=(\\d+)', rank 1 'host=node7 pid=4242'): --out is not the same folder on "
        "every node (a node-local disk). Every rank writes its part of each checkpoint into the one folder rank 0 "
        "completes: put --out on storage every node shares"
    )
    found = re.fullmatch(re.escape(expected).replace(re.escape("(\\d+)"), "(\\d+)"), messages[0])
    assert found is not None, messages[0]
    assert int(found[1]) == ranks[0].pid  # rank 0's own pid: the wrapper exec'd the trainer in place
    # Nothing was trained or saved; rank 0 released its lock (a clean exit empties the file).
    assert sorted(p.name for p in out.iterdir()) == ["train.lock"]
    assert (out / "train.lock").read_text() == ""
