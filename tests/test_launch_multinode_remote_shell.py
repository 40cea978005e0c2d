"""launch/multinode.sh deepspeed over several hosts refuses a working folder or option that the remote shell
would split or expand. Run against a fake `ssh` (every host answers) and a fake `pdsh` that records the one
command line DeepSpeed's runner hands it, as the remote shell would get it.

The fault: DeepSpeed's pdsh runner builds that line from `cd <working folder>;`, the script and the options
joined by spaces, unquoted (deepspeed.launcher.multinode_runner.PDSHRunner.get_cmd). From a folder such
as '/shared/my runs' each host's shell ran `cd /shared/my runs`, which fails, and then started the ranks in
the home directory, where a relative --data and --out point elsewhere; $, ~, * or a quote in an option
were expanded there or broke the line (DeepSpeed double-quotes only an option holding a space).
"""

import os
import subprocess

import pytest

from conftest import REPO, stand_in_commands

FAKE_SSH = "#!/bin/bash\nexit 0\n"
FAKE_PDSH = '#!/bin/bash\necho "pdsh $*" >> "$FAKE_LOG"\n'


def run_deepspeed_mode(tmp_path, cwd, *options):
    folder = stand_in_commands(tmp_path / "bin", {"ssh": FAKE_SSH, "pdsh": FAKE_PDSH})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "SSH_PORT", "PDSH_", "DEEPSPEED_"))}
    env.update(PATH=f"{folder}:{env['PATH']}", FAKE_LOG=str(tmp_path / "pdsh.log"), MASTER_PORT="29513")
    return subprocess.run(
        ["bash", REPO / "launch/multinode.sh", "deepspeed", hostfile, *options],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def refusal(word: str) -> str:
    return (
        "error: deepspeed mode starts other hosts' ranks through a remote shell (pdsh), which would split or "
        f"expand '{word}': use folders without spaces and options without shell characters, or mode mpi\n"
    )


def test_a_working_folder_with_a_space_is_refused(tmp_path):
    """Fault: the hosts' shells ran `cd /.../my runs;`, failed, and started the ranks in the home directory."""
    cwd = tmp_path / "my runs"
    cwd.mkdir()
    proc = run_deepspeed_mode(tmp_path, cwd, "--max-steps", "5")
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", refusal(str(cwd)))
    assert not (tmp_path / "pdsh.log").exists()


@pytest.mark.parametrize("value", ["runs/$USER", "run $N", "~/runs", "it's", "a;b"])
def test_an_option_the_remote_shell_would_change_is_refused(tmp_path, value):
    """Fault: the remote shell expanded the value (within the double quotes DeepSpeed puts around a value
    with a space, $ still is), or failed on its quote."""
    proc = run_deepspeed_mode(tmp_path, tmp_path, "--out", value)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", refusal(value))
    assert not (tmp_path / "pdsh.log").exists()


def test_ordinary_paths_and_values_still_start(tmp_path):
    """Ordinary paths, times and an option with a space (DeepSpeed quotes it) pass: the command reaches pdsh."""
    options = ("--out", "runs/ngpt-0.5b v2", "--max-time", "1:30:00", "--max-steps=5")
    proc = run_deepspeed_mode(tmp_path, tmp_path, *options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = (tmp_path / "pdsh.log").read_text()
    assert f"cd {tmp_path};" in line
    assert line.rstrip().endswith(f'{REPO}/launch/train.py --out "runs/ngpt-0.5b v2" --max-time 1:30:00 --max-steps=5')
